"""Normalizing flows used as global proposals, and their maximum-likelihood fitting.

A proposal flow is a flowjax distribution ``q_φ`` over the sampler's flat unconstrained space.
The default is a rational-quadratic-spline coupling flow, started near the identity (as in
[A], "near-zero initial coupling weights"), followed by a trainable elementwise affine map that
standardises positions: spline transformers are the identity outside their interval, so the
flow must see standardised coordinates (METHOD.md §6).

The samplers keep a flow split in two with :func:`split_flow`: its trainable arrays (which live
in a sampler's state and change during warm-up) and the rest (structure, activation functions,
non-trainable arrays), which never changes.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import paramax
from flowjax.bijections import Affine, RationalQuadraticSpline
from flowjax.distributions import AbstractDistribution
from jax.typing import ArrayLike

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm._flow_construction import FlowSpec, compiled_flow_builder, is_non_trainable
from numpyro_ebm._pickling import remember_recipe

__all__ = [
    "bounded_affine",
    "check_flow_options",
    "default_flow",
    "standardising_moments",
    "fit_flow",
    "flow_optimizer",
    "maximum_likelihood_loss",
    "merge_flow",
    "split_flow",
]

#: Bound on the log-scale of one affine coupling layer, |log s| ≤ this: RealNVP's soft clamp
#: ``log s = c tanh(r / c)`` of the conditioner's output ``r``. With flowjax's unbounded
#: softplus scale a flow fitted on wide walkers became explosive once they narrowed (a prior
#: of sd 100, a posterior of sd 0.1): the scale underflowed to 0 at ordinary points, their
#: log-density was -inf and every later fit step was skipped. Two layers act on each
#: coordinate, so the flow can still scale a standardised coordinate by e^{±10}.
_MAX_LOG_SCALE = 5.0
#: Below this spread a coordinate of the walker cloud counts as collapsed (e.g. every walker
#: started at the same point) and is standardised with scale 1 instead of a degenerate one.
_MIN_STANDARDISING_SCALE = 1e-3


def split_flow(flow: AbstractDistribution) -> tuple[Any, Any]:
    """Split a flow into its trainable arrays and everything else.

    Frozen (``paramax.NonTrainable``) arrays stay with the static part, so an optimizer never
    moves them (METHOD.md §6).

    Args:
        flow: A flowjax distribution.

    Returns:
        ``(params, static)`` such that ``merge_flow(params, static)`` rebuilds ``flow``.

    Example:
        >>> import jax
        >>> flow = default_flow(jax.random.key(0), 2)
        >>> params, static = split_flow(flow)
        >>> rebuilt = merge_flow(params, static)
        >>> bool((rebuilt.log_prob(jax.numpy.zeros(2)) == flow.log_prob(jax.numpy.zeros(2))))
        True
    """
    return eqx.partition(flow, eqx.is_inexact_array, is_leaf=is_non_trainable)


def merge_flow(params: Any, static: Any) -> AbstractDistribution:
    """Rebuild a flow from the two parts returned by :func:`split_flow`.

    Args:
        params: Trainable arrays.
        static: Structure and frozen arrays.

    Returns:
        The flow.
    """
    return eqx.combine(params, static, is_leaf=is_non_trainable)


def _bounded_scale(raw: jax.Array) -> jax.Array:
    """``exp(c tanh(raw / c))``: 1 at ``raw = 0``, within ``e^{±c}`` everywhere."""
    return jnp.exp(_MAX_LOG_SCALE * jnp.tanh(raw / _MAX_LOG_SCALE))


def bounded_affine() -> Affine:
    """The elementwise affine bijection of flowjax with its scale kept in ``e^{±5}``.

    Example:
        >>> import jax.numpy as jnp
        >>> layer = bounded_affine()
        >>> float(layer.transform(jnp.asarray(2.0)))  # the identity at the raw parameters 0
        2.0
    """
    return eqx.tree_at(
        lambda affine: affine.scale, Affine(), paramax.Parameterize(_bounded_scale, jnp.zeros(()))
    )


def check_flow_options(**options: Any) -> None:
    """Raise unless the given keyword arguments of :func:`default_flow` are valid values.

    Args:
        **options: Some of ``dim``, ``flow_layers``, ``nn_width``, ``nn_depth``, ``knots``,
            ``interval`` and ``transformer``.

    Raises:
        ValueError: Naming the option, what was expected and what was given.

    Example:
        >>> check_flow_options(nn_width=0)
        Traceback (most recent call last):
        ...
        ValueError: `nn_width` must be an integer >= 1, got 0.
    """
    for name in ("dim", "flow_layers", "nn_width", "nn_depth", "knots"):
        if name in options:
            positive_int(name, options[name], minimum=0 if name == "nn_depth" else 1)
    if not options.get("interval", 1.0) > 0:
        raise ValueError(f"`interval` must be positive, got {options['interval']!r}.")
    if options.get("transformer", "spline") not in ("spline", "affine"):
        raise ValueError(
            f"`transformer` must be 'spline' or 'affine', got {options['transformer']!r}."
        )


def default_flow(
    key: jax.Array,
    dim: int,
    *,
    loc: ArrayLike = 0.0,
    scale: ArrayLike = 1.0,
    flow_layers: int = 4,
    nn_width: int = 32,
    nn_depth: int = 1,
    knots: int = 8,
    interval: float = 4.0,
    transformer: str = "spline",
) -> AbstractDistribution:
    """Build the default proposal flow: a spline coupling flow after a standardising map.

    The flow is ``x = loc + scale * T(u)``, ``u ~ N(0, I)``, with ``T`` a stack of
    rational-quadratic spline coupling layers (a masked autoregressive spline layer when
    ``dim == 1``, where coupling has nothing to condition on). Coupling flows sample and
    evaluate densities in one pass each way, unlike masked autoregressive flows whose sampling
    is sequential in ``dim`` (METHOD.md §5). :class:`~numpyro_ebm.FlowMCKernel` builds its
    default flow with ``transformer="affine"`` (see its ``flow_options``); the trainer's
    negatives and objectives use this function's defaults.

    Args:
        key: PRNG key for the conditioner weights.
        dim: Dimension of the space.
        loc: Initial location of the standardising map (scalar or ``(dim,)``).
        scale: Initial scale of the standardising map (scalar or ``(dim,)``, positive).
        flow_layers: Number of coupling layers.
        nn_width: Width of each conditioner network.
        nn_depth: Hidden layers in each conditioner network.
        knots: Spline knots per coordinate.
        interval: Splines act on ``[-interval, interval]`` of standardised coordinates and are
            the identity outside.
        transformer: ``"spline"`` (rational-quadratic splines, the most flexible) or
            ``"affine"`` (RealNVP-style affine coupling with a soft-clamped scale,
            :func:`bounded_affine`; several times cheaper per sample; [A] uses RealNVP in
            high dimension).

    Returns:
        A flowjax distribution over ``(dim,)``.

    Raises:
        ValueError: If a size is not a positive integer.

    Example:
        >>> import jax
        >>> flow = default_flow(jax.random.key(0), 3, loc=1.0, scale=2.0)
        >>> flow.sample(jax.random.key(1), (5,)).shape
        (5, 3)
    """
    check_flow_options(
        dim=dim,
        flow_layers=flow_layers,
        nn_width=nn_width,
        nn_depth=nn_depth,
        knots=knots,
        interval=interval,
        transformer=transformer,
    )
    elementwise = (
        (RationalQuadraticSpline, (("knots", knots), ("interval", interval)))
        if transformer == "spline"
        else (bounded_affine, ())
    )
    build = compiled_flow_builder(FlowSpec(dim, flow_layers, nn_width, nn_depth, *elementwise))
    flow = build(typed_key(key), jnp.asarray(loc, float), jnp.asarray(scale, float))
    # flowjax layers hold closures that pickle refuses: record how to rebuild them (see
    # `numpyro_ebm._pickling`), so that kernels and MCMC objects holding this flow pickle.
    return remember_recipe(
        flow,
        default_flow,
        dim=dim,
        flow_layers=flow_layers,
        nn_width=nn_width,
        nn_depth=nn_depth,
        knots=knots,
        interval=interval,
        transformer=transformer,
    )


def standardising_moments(positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-coordinate mean and standard deviation of walker positions (1 where collapsed).

    Args:
        positions: Walker positions, shape ``(num_walkers, dim)``.

    Returns:
        ``(loc, scale)``, each of shape ``(dim,)``.
    """
    finite = jnp.where(jnp.isfinite(positions), positions, jnp.nan)
    loc = jnp.nan_to_num(jnp.nanmean(finite, axis=0))
    scale = jnp.nan_to_num(jnp.nanstd(finite, axis=0), nan=1.0)
    return loc, jnp.where(scale > _MIN_STANDARDISING_SCALE, scale, 1.0)


def flow_optimizer(learning_rate: float = 1e-3, max_grad_norm: float = 10.0):
    """The optimizer used to fit proposal flows: Adam with gradient clipping, skipping NaN steps.

    A non-finite loss (e.g. a walker at a non-finite position) skips the update instead of
    corrupting the flow.

    Args:
        learning_rate: Adam step size.
        max_grad_norm: Global gradient-norm clip.

    Returns:
        An ``optax.GradientTransformation``.
    """
    learning_rate = positive_float("learning_rate", learning_rate)
    return optax.apply_if_finite(
        optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate)),
        max_consecutive_errors=1_000_000,
    )


def maximum_likelihood_loss(params: Any, static: Any, positions: jax.Array) -> jax.Array:
    """Negative mean log-density of ``positions`` under the flow (forward KL up to a constant).

    Args:
        params: Trainable arrays of the flow.
        static: The rest of the flow.
        positions: Points, shape ``(n, dim)``.

    Returns:
        Scalar loss.
    """
    flow = merge_flow(params, static)
    return -jnp.mean(flow.log_prob(positions))


def fit_flow(
    rng_key: jax.Array,
    params: Any,
    opt_state: Any,
    static: Any,
    positions: jax.Array,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int,
    batch_sharding: jax.sharding.Sharding | None = None,
    row_mask: jax.Array | None = None,
    batch_transform: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[Any, Any, jax.Array]:
    """Take ``num_steps`` maximum-likelihood steps on mini-batches drawn from ``positions``.

    This is the flow-fitting step of flowMC ([A] Alg. 5, step 3). Pure: returns new parameters
    and optimizer state.

    Args:
        rng_key: PRNG key for the mini-batches.
        params: Trainable arrays of the flow.
        opt_state: Optimizer state for ``params``.
        static: The rest of the flow.
        positions: Training points, shape ``(n, dim)``; non-finite rows are ignored.
        optimizer: The optax optimizer that made ``opt_state``.
        num_steps: Number of gradient steps.
        batch_size: Points per step (drawn with replacement).
        batch_sharding: Split each mini-batch over devices this way (data parallelism: every
            device takes the loss gradient of its share, XLA sums them); ``None``: as XLA likes.
        row_mask: Boolean ``(n,)``: draw only the rows where it is true.
        batch_transform: Applied to each mini-batch before the flow sees it (e.g. a
            standardisation), so that ``positions`` need not be transformed and copied whole.

    Returns:
        ``(params, opt_state, loss)`` with the loss of the last step.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> flow = default_flow(jax.random.key(0), 2)
        >>> params, static = split_flow(flow)
        >>> optimizer = flow_optimizer(1e-2)
        >>> x = 3.0 + jax.random.normal(jax.random.key(1), (512, 2))
        >>> params, _, loss = fit_flow(jax.random.key(2), params, optimizer.init(params),
        ...     static, x, optimizer=optimizer, num_steps=200, batch_size=128)
        >>> bool(loss < maximum_likelihood_loss(*split_flow(flow), x))
        True
    """
    finite_rows = jnp.all(jnp.isfinite(positions), axis=-1)
    if row_mask is not None:
        finite_rows = finite_rows & row_mask
    # Non-finite rows get zero probability of being drawn; if every row is non-finite the
    # uniform fallback keeps shapes valid and `apply_if_finite` skips the resulting NaN step.
    probabilities = jnp.where(jnp.any(finite_rows), finite_rows / jnp.sum(finite_rows), 1.0)
    loss_and_grad = jax.value_and_grad(maximum_likelihood_loss)

    def one_step(carry, key):
        params, opt_state = carry
        rows = jax.random.choice(
            key, positions.shape[0], (batch_size,), p=probabilities / probabilities.sum()
        )
        batch = positions[rows]
        if batch_transform is not None:
            batch = batch_transform(batch)
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        loss, grads = loss_and_grad(params, static, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(typed_key(rng_key), num_steps)
    (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), keys)
    return params, opt_state, losses[-1]
