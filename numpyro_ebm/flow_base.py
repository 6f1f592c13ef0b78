"""An EBM on top of a fitted flow: the energy learns what the flow misses.

[A]'s tilted model is ``exp(-E_θ(x)) ρ(x)`` with a Gaussian ρ. On real data in dozens of
dimensions the energy must then learn everything from scratch, and the sampler's flow must
learn the model's shape from the negatives alone. A flow ``q₀`` fitted to the training data
by maximum likelihood already is a good density; :class:`FlowBaseEnergy` makes the model

    p_θ(x) ∝ exp(-c_θ(x)) q₀(x),

an exponential tilt of ``q₀`` (a residual EBM: Bakhtin et al. 2021; Xiao, Yan & Amit 2021;
the flow-based backbone of Nijkamp et al. 2022). The correction ``c_θ`` starts at zero, so the
model starts *equal* to the flow, with log Z = 0; the contrastive gradient then moves it only
where the data and ``q₀`` disagree. ``q₀`` is frozen (its gradient is stopped, so Adam leaves it
as it is) and also serves as the samplers' first proposal and the walkers' first positions, so
the flow-assisted negatives start mixed; log Z by importance sampling from it stays accurate
while ``c_θ`` is small.

References:
    [A] Grenioux, Moulines & Gabrié (2023), arXiv:2306.00684.
    A. Bakhtin et al., *Residual energy-based models for text*, JMLR 22 (2021).
    Z. Xiao, Q. Yan, Y. Amit, *Exponential tilting of generative models*, ICLR (2021).
    E. Nijkamp et al., *MCMC should mix: learning energy-based model with neural transport
    latent space MCMC*, ICLR (2022).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import AbstractDistribution, Normal
from flowjax.flows import coupling_flow, masked_autoregressive_flow
from flowjax.train import fit_to_data
from jax.typing import ArrayLike

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm.energies import base_log_prob

__all__ = ["BASE_FLOW_KINDS", "FlowBaseEnergy", "fit_base_flow", "importance_proposal"]

#: The flows :func:`fit_base_flow` builds, by name: a spline coupling flow (density and samples
#: in one pass each) and a masked autoregressive spline flow (MAF: density in one pass,
#: samples one coordinate at a time; the better density on digits, see ``docs/performance.md``).
BASE_FLOW_KINDS = {"coupling": coupling_flow, "maf": masked_autoregressive_flow}


def _frozen(tree: Any) -> Any:
    """``tree`` with the gradient of every array stopped."""
    return jax.tree.map(lambda leaf: jax.lax.stop_gradient(leaf) if eqx.is_array(leaf) else leaf,
                        tree)  # fmt: skip


def _check_flow(name: str, flow: Any) -> None:
    if not isinstance(flow, AbstractDistribution):
        raise TypeError(f"expected a flowjax distribution as `{name}`, got {type(flow).__name__}")


class FlowBaseEnergy(eqx.Module):
    """An energy whose tilted model is ``exp(-c_θ(x)) q₀(x)``: a correction of a fitted flow.

    As :class:`~numpyro_ebm.energies.TiltedEnergy` subtracts ``log ρ``, this energy is
    ``c_θ(x) - log q₀(x) + log ρ(x)`` with the trainer's ρ = N(0, σ² I): pass the same σ as
    ``TrainConfig(base_scale=...)`` (the trainer checks). The trainer draws its walkers from
    ``q₀`` (:meth:`initial_walkers`: the initial model exactly), and samplers start their flow
    from :meth:`initial_flow`: ``q₀`` itself, or ``proposal_flow`` where ``q₀`` is slow to
    sample. A masked autoregressive flow (MAF) evaluates its density in one pass but samples
    one coordinate at a time, so on digits (d = 64) the best ``q₀`` is a MAF and the sampler's
    flow a coupling flow fitted to the same data, cheap both ways.

    Args:
        correction: The trainable correction ``c_θ``, an equinox module from ``(d,)`` to a
            scalar (e.g. :class:`~numpyro_ebm.energies.MLPEnergy`, whose last layer starts at
            zero so the model starts equal to ``q₀``).
        base_flow: The fitted flow ``q₀`` over ``(d,)`` (frozen).
        base_scale: σ of the trainer's ρ.
        proposal_flow: The flow the samplers start from, if not ``q₀`` (a flow over ``(d,)``
            close to ``q₀`` that samples fast). The walkers' first positions and log Z's
            importance draws still come from ``q₀`` (:func:`importance_proposal`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flowjax.distributions import Normal
        >>> from numpyro_ebm.energies import MLPEnergy, TiltedEnergy
        >>> energy = FlowBaseEnergy(MLPEnergy(2, key=jax.random.key(0)), Normal(jnp.ones(2)), 1.0)
        >>> x = jnp.array([0.5, 2.0])  # the model starts as q₀ = N(1, I) exactly
        >>> bool(jnp.isclose(TiltedEnergy(energy, 1.0)(x), -Normal(jnp.ones(2)).log_prob(x)))
        True
    """

    correction: eqx.Module
    base_flow: AbstractDistribution
    base_scale: float = eqx.field(static=True)
    proposal_flow: AbstractDistribution | None

    def __init__(
        self,
        correction: eqx.Module,
        base_flow: AbstractDistribution,
        base_scale: float,
        proposal_flow: AbstractDistribution | None = None,
    ):
        if not callable(correction):
            raise TypeError(f"expected a callable `correction`, got {type(correction).__name__}")
        _check_flow("base_flow", base_flow)
        if proposal_flow is not None:
            _check_flow("proposal_flow", proposal_flow)
            if proposal_flow.shape != base_flow.shape:
                raise ValueError(
                    f"expected `proposal_flow` over the base flow's shape {base_flow.shape}, "
                    f"got {proposal_flow.shape}"
                )
        self.correction = correction
        self.base_flow = base_flow
        self.base_scale = positive_float("base_scale", base_scale)
        self.proposal_flow = proposal_flow

    def __call__(self, x: ArrayLike) -> jax.Array:
        """``c_θ(x) - log q₀(x) + log ρ(x)`` of one point ``(d,)``."""
        flow_log_prob = _frozen(self.base_flow).log_prob(x)
        return self.correction(x) - flow_log_prob + base_log_prob(x, self.base_scale)

    def initial_flow(self) -> AbstractDistribution:
        """The flow samplers start from: ``proposal_flow``, else ``q₀``."""
        return self.base_flow if self.proposal_flow is None else self.proposal_flow

    def initial_walkers(self, rng_key: jax.Array, num_walkers: int) -> jax.Array:
        """``(num_walkers, d)`` exact draws of the initial model, ``q₀``: walkers start mixed."""
        return self.base_flow.sample(
            typed_key(rng_key), (positive_int("num_walkers", num_walkers),)
        )


def fit_base_flow(
    rng_key: jax.Array,
    data: ArrayLike,
    *,
    flow: AbstractDistribution | None = None,
    kind: str = "coupling",
    flow_layers: int = 4,
    nn_width: int = 64,
    knots: int = 8,
    interval: float = 5.0,
    learning_rate: float = 1e-3,
    max_epochs: int = 400,
    max_patience: int = 20,
    batch_size: int = 128,
    val_prop: float = 0.1,
    show_progress: bool = False,
) -> tuple[AbstractDistribution, list[float]]:
    """Fit a flow ``q₀`` to (standardised) training data by maximum likelihood.

    By default a rational-quadratic spline coupling flow (cheap both ways, so the sampler
    can propose from it; 4 layers of width 64 did better on digits than 8 of width 128),
    fitted with Adam and early stopping on a held-out share of ``data``
    (flowjax's ``fit_to_data``, best parameters returned).

    Args:
        rng_key: Key of the initial weights and of the fit.
        data: Training points ``(n, d)`` in the model's coordinates.
        flow: The flow to fit, instead of one built here.
        kind: The flow built here: ``"coupling"`` or ``"maf"`` (:data:`BASE_FLOW_KINDS`).
        flow_layers: Layers of the flow built here.
        nn_width: Conditioner width of the flow built here (a MAF needs about ``d`` or more).
        knots: Spline knots of the flow built here.
        interval: Splines act on ``[-interval, interval]`` (standardised data lies within).
        learning_rate: Adam's rate.
        max_epochs: Epochs at most.
        max_patience: Epochs without a better held-out loss before stopping.
        batch_size: Points per step.
        val_prop: Share of ``data`` held out for early stopping.
        show_progress: flowjax's progress bar.

    Returns:
        The fitted flow and its per-epoch held-out losses (mean negative log-likelihood).

    Example:
        >>> import jax, numpy as np
        >>> data = np.random.default_rng(0).normal(size=(200, 2))
        >>> flow, losses = fit_base_flow(jax.random.key(0), data, flow_layers=1, nn_width=8,
        ...                              max_epochs=3)
        >>> flow.shape, len(losses) <= 3
        ((2,), True)
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or len(data) < 2:
        raise ValueError(f"expected data of shape (n, d) with n >= 2, got shape {data.shape}")
    key_flow, key_fit = jax.random.split(typed_key(rng_key))
    if flow is None:
        if kind not in BASE_FLOW_KINDS:
            raise ValueError(f"expected `kind` in {tuple(BASE_FLOW_KINDS)}, got {kind!r}")
        flow = BASE_FLOW_KINDS[kind](
            key_flow,
            base_dist=Normal(np.zeros(data.shape[1], np.float32)),
            transformer=RationalQuadraticSpline(
                knots=positive_int("knots", knots), interval=interval
            ),
            flow_layers=positive_int("flow_layers", flow_layers),
            nn_width=positive_int("nn_width", nn_width),
        )
    flow, losses = fit_to_data(
        key_fit,
        flow,
        data,
        optimizer=optax.adam(positive_float("learning_rate", learning_rate)),
        max_epochs=positive_int("max_epochs", max_epochs),
        max_patience=positive_int("max_patience", max_patience),
        batch_size=positive_int("batch_size", batch_size),
        val_prop=val_prop,
        show_progress=show_progress,
    )
    return flow, [float(v) for v in losses["val"]]


def importance_proposal(
    energy: Any, flow: AbstractDistribution | None, base_scale: float, dim: int
) -> AbstractDistribution:
    """The proposal that importance-samples log Z of ``energy``'s tilted model best.

    An energy with its own base flow (a :class:`FlowBaseEnergy`: the model is
    ``exp(-c_θ) q₀``) is proposed from ``q₀``, whose importance weights ``exp(-c_θ)`` stay
    near even while the correction is flat; otherwise from ``flow`` (the run's flow), else ρ.
    On digits the EBM on a coupling flow had an importance ESS of about 8000 of 16384 draws
    from ``q₀`` against 6 from the trainer's flow (notebook 06, ``docs/performance.md``).

    Args:
        energy: The energy ``E_θ`` (before the tilt).
        flow: The run's flow, or ``None``.
        base_scale: σ of ρ = N(0, σ² I).
        dim: Dimension of the model's coordinates.

    Returns:
        A flowjax distribution over ``(dim,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flowjax.distributions import Normal
        >>> q0 = Normal(jnp.ones(2))
        >>> energy = FlowBaseEnergy(lambda x: 0.0 * x.sum(), q0, 1.0)
        >>> importance_proposal(energy, None, 1.0, 2) is q0
        True
    """
    base_flow = getattr(energy, "base_flow", None)
    if isinstance(base_flow, AbstractDistribution):
        return base_flow
    if flow is not None:
        return flow
    return Normal(jnp.zeros(dim), base_scale)
