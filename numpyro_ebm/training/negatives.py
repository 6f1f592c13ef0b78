"""Negative samplers: persistent walkers that follow the current EBM during training.

Every sampler has the same small interface, a :class:`NegativeSampler` of three pure functions
and one accessor:

- ``init(rng_key, positions, energy_params) -> state``: start the walkers at ``positions``
  (shape ``(num_walkers, dim)``), called once outside ``jit``;
- ``step(state, energy_params) -> (state, info)``: move the walkers toward the tilted model
  ``p ∝ exp(-E_θ) ρ`` of the *current* energy parameters (METHOD.md §1), jittable;
- ``positions(state)``: the current walker positions, the negatives ``x⁻``;
- ``get_flow(state)``: the flow the sampler carries, or ``None``.

The four samplers are those of [A]:

- ``flowmc`` ([A] Alg. 1 and 5): :class:`~numpyro_ebm.FlowMCKernel` over
  :func:`~numpyro_ebm.energies.ebm_model`, i-SIR (or independent MH) with the flow, then MALA;
  the kernel's adaptation never stops, so it fits its flow on the negatives at every EBM step.
- ``mala``: the same kernel with ``global_move="none"``.
- ``ula`` (ULA-EBM): unadjusted Langevin with [A]'s step ``(0.125)²/2``.
- ``nt`` (NT-EBM): MALA in the latent space of the flow, the flow fitted on the negatives.

``flowmc`` and ``mala`` do not copy the sampler: they call the very ``init`` and ``sample``
of :class:`~numpyro_ebm.FlowMCKernel`, with the EBM's parameters as the model's argument.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from flowjax.distributions import AbstractDistribution, Transformed

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm.energies import TiltedEnergy, ebm_model
from numpyro_ebm.flows import default_flow, fit_flow, flow_optimizer, merge_flow, split_flow
from numpyro_ebm.kernel import FlowMCKernel
from numpyro_ebm.samplers.adaptation import adapt_step_size
from numpyro_ebm.samplers.langevin import Walkers, init_walkers, mala_step, ula_step

__all__ = [
    "NEGATIVE_SAMPLERS",
    "NegativeInfo",
    "NegativeSampler",
    "NTState",
    "ULAState",
    "flowmc_sampler",
    "make_negative_sampler",
    "mala_sampler",
    "nt_sampler",
    "ula_sampler",
]

#: Names accepted by :func:`make_negative_sampler`.
NEGATIVE_SAMPLERS = ("flowmc", "ula", "mala", "nt")

#: ULA step of [A]'s ULA-EBM baseline (METHOD.md §3): η = (0.125)² / 2.
ULA_STEP_SIZE = 0.125**2 / 2
#: MALA acceptance targeted by NT-EBM in [A] (METHOD.md §3).
NT_TARGET_ACCEPT_PROB = 0.75
#: Adaptation "never stops" inside training (METHOD.md §2): a warm-up longer than any run,
#: kept well inside int32 because the kernel compares it with its int32 iteration counter.
_ENDLESS_WARMUP = 2**30


class NegativeInfo(NamedTuple):
    """Diagnostics of one EBM step's negative sampling (scalars, means over walkers).

    Attributes:
        accept_prob: Mean local (MALA) acceptance probability; 1 for ULA where finite.
        global_accept_prob: Mean acceptance of the flow's global move; 0 without one.
        flow_loss: Loss of the last flow fit (NaN when the flow was not fitted).
    """

    accept_prob: jax.Array
    global_accept_prob: jax.Array
    flow_loss: jax.Array


class NegativeSampler(NamedTuple):
    """A negative sampler: pure ``init``/``step`` over a state, and accessors.

    Attributes:
        name: One of :data:`NEGATIVE_SAMPLERS`.
        init: ``init(rng_key, positions, energy_params) -> state``; outside ``jit``.
        step: ``step(state, energy_params) -> (state, NegativeInfo)``; jittable.
        positions: ``positions(state) -> (num_walkers, dim)`` array of negatives.
        get_flow: ``get_flow(state)``: the sampler's flow, or ``None`` if it has none.
    """

    name: str
    init: Callable[[jax.Array, jax.Array, Any], Any]
    step: Callable[[Any, Any], tuple[Any, NegativeInfo]]
    positions: Callable[[Any], jax.Array]
    get_flow: Callable[[Any], AbstractDistribution | None]


def _check_positions(positions: jax.Array, dim: int) -> jax.Array:
    positions = jnp.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != dim or positions.shape[0] < 2:
        raise ValueError(
            f"expected initial walker positions of shape (num_walkers, {dim}) with "
            f"num_walkers >= 2, got shape {positions.shape}"
        )
    return positions


def _tilted_potential(energy_static: Any, energy_params: Any, base_scale: float) -> Callable:
    """``U(x) = E_θ(x) - log ρ(x)`` of one point, for the given energy parameters."""
    return TiltedEnergy(eqx.combine(energy_params, energy_static), base_scale)


# -- flowmc and mala: FlowMCKernel ------------------------------------------------------------


def _kernel_sampler(
    name: str,
    energy: Callable,
    dim: int,
    base_scale: float,
    *,
    global_move: str,
    num_rounds: int,
    num_particles: int,
    num_local_steps: int,
    step_size: float,
    flow_learning_rate: float,
    fit_batch_size: int,
    flow_seed: int,
) -> NegativeSampler:
    num_rounds = positive_int("num_rounds", num_rounds)
    base_scale = positive_float("base_scale", base_scale)
    _, energy_static = eqx.partition(energy, eqx.is_array)
    model = ebm_model(energy_static, dim, base_scale=base_scale)
    # The flow starts as ρ = N(0, σ² I) exactly, so model and flow start equal (METHOD.md §1).
    flow = default_flow(jax.random.key(flow_seed), dim, loc=0.0, scale=base_scale)
    kernel = FlowMCKernel(
        model,
        flow=flow,
        global_move=global_move,
        num_particles=num_particles,
        num_local_steps=num_local_steps,
        step_size=step_size,
        learning_rate=flow_learning_rate,
        # One flow gradient step per EBM step, on the current negatives (METHOD.md §2-3):
        # the kernel fits every `fit_every` rounds on a buffer of the last round only.
        fit_every=num_rounds,
        num_fit_steps=1,
        fit_batch_size=fit_batch_size,
        buffer_size=1,
        fit_patience=None,  # the target moves with the EBM: the flow never stops following
    )

    def init(rng_key, positions, energy_params):
        positions = _check_positions(positions, dim)
        return kernel.init(
            jax.random.split(typed_key(rng_key), positions.shape[0]),
            num_warmup=_ENDLESS_WARMUP,
            init_params={"x": positions},
            model_args=(energy_params,),
            model_kwargs={},
        )

    def step(state, energy_params):
        def one_round(state, _):
            state = kernel.sample(state, (energy_params,), {})
            return state, (
                jnp.mean(state.accept_prob),
                jnp.mean(state.global_accept_prob),
                state.flow_loss[0],
            )

        state, (accept_prob, global_accept_prob, flow_loss) = jax.lax.scan(
            one_round, state, length=num_rounds
        )
        # The flow is fitted on the first round of each EBM step (`fit_every=num_rounds`).
        return state, NegativeInfo(
            jnp.mean(accept_prob), jnp.mean(global_accept_prob), flow_loss[0]
        )

    def positions(state):
        return state.z["x"]

    def get_flow(state):
        return kernel.get_flow(state) if global_move != "none" else None

    return NegativeSampler(name, init, step, positions, get_flow)


def flowmc_sampler(
    energy: Callable,
    dim: int,
    base_scale: float,
    *,
    global_move: str = "isir",
    num_rounds: int = 1,
    num_particles: int = 32,
    num_local_steps: int = 5,
    step_size: float = 0.1,
    flow_learning_rate: float = 1e-3,
    fit_batch_size: int = 256,
    flow_seed: int = 0,
) -> NegativeSampler:
    """Flow-assisted negatives ([A] Alg. 1): :class:`~numpyro_ebm.FlowMCKernel` on the EBM.

    Each EBM step runs ``num_rounds`` rounds of the kernel (a global i-SIR or IMH move with
    the flow, then ``num_local_steps`` MALA steps with the step size adapted toward 0.574) on
    ``ebm_model(energy, dim, base_scale=base_scale)`` with the current parameters as the
    model's argument, and one Adam step of the flow's maximum likelihood on the negatives.
    The flow starts as ρ = N(0, σ² I) (:func:`~numpyro_ebm.flows.default_flow`).

    Args:
        energy: The energy module; only its static part is kept (the arrays come with each
            call).
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        global_move: ``"isir"`` ([A]) or ``"imh"``.
        num_rounds: Kernel rounds per EBM step.
        num_particles: i-SIR particles ``N``, the current state included.
        num_local_steps: MALA steps per round.
        step_size: Initial MALA step size.
        flow_learning_rate: Adam learning rate of the flow.
        fit_batch_size: Negatives per flow gradient step.
        flow_seed: Seed of the flow's initial conditioner weights.

    Returns:
        The sampler.

    Example:
        >>> import jax
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> sampler = flowmc_sampler(energy, 2, 1.0, num_particles=4, num_local_steps=1)
        >>> sampler.name
        'flowmc'

        Then ``state = sampler.init(key, walkers, params)`` once, and
        ``state, info = sampler.step(state, params)`` inside the jitted training loop.
    """
    if global_move not in ("isir", "imh"):
        raise ValueError(f"`global_move` must be 'isir' or 'imh', got {global_move!r}.")
    return _kernel_sampler(
        "flowmc",
        energy,
        dim,
        base_scale,
        global_move=global_move,
        num_rounds=num_rounds,
        num_particles=num_particles,
        num_local_steps=num_local_steps,
        step_size=step_size,
        flow_learning_rate=flow_learning_rate,
        fit_batch_size=fit_batch_size,
        flow_seed=flow_seed,
    )


def mala_sampler(
    energy: Callable,
    dim: int,
    base_scale: float,
    *,
    num_rounds: int = 1,
    num_local_steps: int = 5,
    step_size: float = 0.1,
) -> NegativeSampler:
    """Persistent MALA negatives: :class:`~numpyro_ebm.FlowMCKernel` with ``global_move="none"``.

    Args:
        energy: The energy module (its static part is kept).
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        num_rounds: Kernel rounds per EBM step.
        num_local_steps: MALA steps per round.
        step_size: Initial MALA step size (adapted toward 0.574 acceptance).

    Returns:
        The sampler.

    Example:
        >>> import jax
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> mala_sampler(energy, 2, 1.0).name
        'mala'
    """
    return _kernel_sampler(
        "mala",
        energy,
        dim,
        base_scale,
        global_move="none",
        num_rounds=num_rounds,
        num_particles=2,
        num_local_steps=num_local_steps,
        step_size=step_size,
        flow_learning_rate=1e-3,
        fit_batch_size=1,
        flow_seed=0,
    )


# -- ula ------------------------------------------------------------------------------------


class ULAState(NamedTuple):
    """State of the ULA sampler.

    Attributes:
        walkers: Walker positions with potential and gradient (at the last energy seen).
        rng_key: PRNG key.
    """

    walkers: Walkers
    rng_key: jax.Array


def ula_sampler(
    energy: Callable,
    dim: int,
    base_scale: float,
    *,
    num_steps: int = 10,
    step_size: float = ULA_STEP_SIZE,
) -> NegativeSampler:
    """Persistent unadjusted Langevin negatives: the ULA-EBM baseline of [A].

    Each EBM step runs ``num_steps`` ULA steps ``x ← x - η ∇U(x) + sqrt(2η) ξ`` on the current
    tilted potential; only the last state is a negative, as in [A].

    Args:
        energy: The energy module (its static part is kept).
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        num_steps: ULA steps per EBM step.
        step_size: ``η``; [A] uses ``(0.125)² / 2``.

    Returns:
        The sampler.

    Example:
        >>> import jax, equinox as eqx
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> params = eqx.filter(energy, eqx.is_array)
        >>> sampler = ula_sampler(energy, 2, 1.0, num_steps=2)
        >>> state = sampler.init(jax.random.key(1), jax.numpy.zeros((8, 2)), params)
        >>> state, info = sampler.step(state, params)
        >>> float(info.accept_prob)
        1.0
    """
    num_steps = positive_int("num_steps", num_steps)
    step_size = positive_float("step_size", step_size)
    base_scale = positive_float("base_scale", base_scale)
    _, energy_static = eqx.partition(energy, eqx.is_array)

    def init(rng_key, positions, energy_params):
        positions = _check_positions(positions, dim)
        potential_fn = _tilted_potential(energy_static, energy_params, base_scale)
        return ULAState(init_walkers(positions, potential_fn), typed_key(rng_key))

    def step(state, energy_params):
        potential_fn = _tilted_potential(energy_static, energy_params, base_scale)
        rng_key, key_steps = jax.random.split(state.rng_key)
        # The energy changed since the last step: re-evaluate the potential and its gradient.
        walkers = init_walkers(state.walkers.position, potential_fn)

        def one_step(walkers, key):
            walkers, info = ula_step(key, walkers, potential_fn, step_size)
            return walkers, info.accept_prob

        walkers, accept_prob = jax.lax.scan(
            one_step, walkers, jax.random.split(key_steps, num_steps)
        )
        dtype = walkers.position.dtype
        info = NegativeInfo(
            jnp.mean(accept_prob), jnp.zeros((), dtype), jnp.full((), jnp.nan, dtype)
        )
        return ULAState(walkers, rng_key), info

    def positions(state):
        return state.walkers.position

    return NegativeSampler("ula", init, step, positions, lambda state: None)


# -- nt: MALA in the flow's latent space ------------------------------------------------------


class NTState(NamedTuple):
    """State of the NT (neural-transport MALA) sampler.

    Attributes:
        position: Walker positions in data space, ``(num_walkers, dim)``.
        step_size: MALA step size in latent space (scalar).
        flow_params: Trainable arrays of the flow.
        opt_state: The flow optimizer's state.
        round_index: EBM steps done (sets the step-size adaptation gain).
        rng_key: PRNG key.
    """

    position: jax.Array
    step_size: jax.Array
    flow_params: Any
    opt_state: Any
    round_index: jax.Array
    rng_key: jax.Array


def _push_forward(flow: AbstractDistribution, latent: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x = T(u)`` from the flow's standard-normal latent, with ``log|det ∂T/∂u|``."""
    if not isinstance(flow, Transformed):
        return latent, jnp.zeros((), latent.dtype)
    inner, log_det_inner = _push_forward(flow.base_dist, latent)
    position, log_det = flow.bijection.transform_and_log_det(inner)
    return position, log_det_inner + log_det


def _pull_back(flow: AbstractDistribution, position: jax.Array) -> jax.Array:
    """``u = T⁻¹(x)``."""
    if not isinstance(flow, Transformed):
        return position
    return _pull_back(flow.base_dist, flow.bijection.inverse(position))


def nt_sampler(
    energy: Callable,
    dim: int,
    base_scale: float,
    *,
    num_steps: int = 5,
    step_size: float = 0.5,
    target_accept_prob: float = NT_TARGET_ACCEPT_PROB,
    flow_learning_rate: float = 1e-3,
    fit_batch_size: int = 256,
    flow_seed: int = 0,
) -> NegativeSampler:
    """NT-EBM negatives of [A]: MALA in the latent space of a flow fitted on the negatives.

    With ``x = T(u)`` the flow's map from its standard-normal latent, the walkers run MALA on
    the latent potential ``U(T(u)) - log|det ∂T/∂u|``, whose ``exp(-·)`` is the pull-back of
    the tilted model. Walkers persist in data space and are pulled back through the current
    flow at each EBM step; the step size is adapted toward 75% acceptance ([A]); then the flow
    takes one maximum-likelihood step on the negatives (:func:`~numpyro_ebm.flows.fit_flow`).

    Args:
        energy: The energy module (its static part is kept).
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I); the flow starts as ρ.
        num_steps: Latent MALA steps per EBM step.
        step_size: Initial latent step size.
        target_accept_prob: Acceptance the step size is adapted toward.
        flow_learning_rate: Adam learning rate of the flow.
        fit_batch_size: Negatives per flow gradient step.
        flow_seed: Seed of the flow's initial conditioner weights.

    Returns:
        The sampler.

    Example:
        >>> import jax, equinox as eqx
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> params = eqx.filter(energy, eqx.is_array)
        >>> sampler = nt_sampler(energy, 2, 1.0, num_steps=2)
        >>> state = sampler.init(jax.random.key(1), jax.numpy.zeros((8, 2)), params)
        >>> sampler.positions(state).shape, sampler.get_flow(state).shape
        ((8, 2), (2,))
    """
    num_steps = positive_int("num_steps", num_steps)
    step_size = positive_float("step_size", step_size)
    base_scale = positive_float("base_scale", base_scale)
    fit_batch_size = positive_int("fit_batch_size", fit_batch_size)
    if not 0 < target_accept_prob < 1:
        raise ValueError(f"`target_accept_prob` must be in (0, 1), got {target_accept_prob!r}.")
    _, energy_static = eqx.partition(energy, eqx.is_array)
    optimizer = flow_optimizer(flow_learning_rate)
    flow_params, flow_static = split_flow(
        default_flow(jax.random.key(flow_seed), dim, loc=0.0, scale=base_scale)
    )

    def init(rng_key, positions, energy_params):
        positions = _check_positions(positions, dim)
        return NTState(
            position=positions,
            step_size=jnp.array(step_size, positions.dtype),
            flow_params=flow_params,
            opt_state=optimizer.init(flow_params),
            round_index=jnp.array(0),
            rng_key=typed_key(rng_key),
        )

    def step(state, energy_params):
        potential_fn = _tilted_potential(energy_static, energy_params, base_scale)
        flow = merge_flow(state.flow_params, flow_static)

        def latent_potential(latent):
            position, log_det = _push_forward(flow, latent)
            return potential_fn(position) - log_det

        rng_key, key_steps, key_fit = jax.random.split(state.rng_key, 3)
        latent = jax.vmap(lambda x: _pull_back(flow, x))(state.position)
        walkers = init_walkers(latent, latent_potential)

        def one_step(walkers, key):
            walkers, info = mala_step(key, walkers, latent_potential, state.step_size)
            return walkers, info.accept_prob

        walkers, accept_prob = jax.lax.scan(
            one_step, walkers, jax.random.split(key_steps, num_steps)
        )
        position = jax.vmap(lambda u: _push_forward(flow, u)[0])(walkers.position)
        # A latent point whose image is not finite would poison the flow fit: keep the old one.
        finite = jnp.all(jnp.isfinite(position), axis=-1, keepdims=True)
        position = jnp.where(finite, position, state.position)
        mean_accept_prob = jnp.mean(accept_prob)
        new_step_size = adapt_step_size(
            state.step_size, mean_accept_prob, target_accept_prob, state.round_index
        )
        params, opt_state, flow_loss = fit_flow(
            key_fit,
            state.flow_params,
            state.opt_state,
            flow_static,
            position,
            optimizer=optimizer,
            num_steps=1,
            batch_size=fit_batch_size,
        )
        new_state = NTState(
            position=position,
            step_size=new_step_size,
            flow_params=params,
            opt_state=opt_state,
            round_index=state.round_index + 1,
            rng_key=rng_key,
        )
        dtype = position.dtype
        info = NegativeInfo(mean_accept_prob, jnp.zeros((), dtype), flow_loss.astype(dtype))
        return new_state, info

    def positions(state):
        return state.position

    def get_flow(state):
        return merge_flow(state.flow_params, flow_static)

    return NegativeSampler("nt", init, step, positions, get_flow)


def make_negative_sampler(
    name: str, energy: Callable, dim: int, base_scale: float, **options: Any
) -> NegativeSampler:
    """Build a negative sampler by name.

    Args:
        name: One of :data:`NEGATIVE_SAMPLERS`: ``"flowmc"``, ``"ula"``, ``"mala"``, ``"nt"``.
        energy: The energy module.
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        **options: Keyword arguments of :func:`flowmc_sampler`, :func:`ula_sampler`,
            :func:`mala_sampler` or :func:`nt_sampler`.

    Returns:
        The sampler.

    Raises:
        ValueError: For an unknown name.

    Example:
        >>> import jax
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
        >>> make_negative_sampler("ula", energy, 2, 1.0).name
        'ula'
    """
    builders = {
        "flowmc": flowmc_sampler,
        "ula": ula_sampler,
        "mala": mala_sampler,
        "nt": nt_sampler,
    }
    if name not in builders:
        raise ValueError(f"expected a sampler in {NEGATIVE_SAMPLERS}, got {name!r}")
    return builders[name](energy, dim, base_scale, **options)
