"""``dsm`` and ``ssm``: score matching of the tilted model, no samples of the model needed.

Both fit the score ``s_θ(x) = -∇ₓU_θ(x)`` of the whole model ``p_θ ∝ exp(-E_θ) ρ``, whose
potential is ``U_θ = E_θ - log ρ`` (the tilt ``ρ = N(0, σ_ρ² I)`` is part of the model), to the
data's score; neither sees ``log Z_θ``. Their state is a PRNG key: they keep no samples and no
flow.

- ``dsm`` ([A], [B], [C]): denoising score matching. It fits the score of the *noise-smoothed*
  data ``p * N(0, σ² I)``, not of ``p`` itself; with several noise levels, a σ²-weighted blend
  of smoothed scores (see :class:`DSM`).
- ``ssm`` ([D]): sliced score matching, variance-reduced form. It fits the score of ``p``
  itself, at the price of second derivatives of ``E_θ`` (a Jacobian-vector product of the score).

References:
    [A] P. Vincent, *A Connection Between Score Matching and Denoising Autoencoders*, Neural
    Computation 23(7) (2011).
    [B] Y. Song, S. Ermon, *Generative Modeling by Estimating Gradients of the Data
    Distribution*, NeurIPS (2019).
    [C] Z. Li, Y. Chen, F. T. Sommer, *Learning Energy-Based Models in High-Dimensional Spaces
    with Multi-scale Denoising Score Matching*, arXiv:1910.07762 (2019).
    [D] Y. Song, S. Garg, J. Shi, S. Ermon, *Sliced Score Matching: A Scalable Approach to
    Density and Score Estimation*, UAI (2019).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, override

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.training.objectives.base import (
    Metrics,
    Objective,
    ObjectiveContext,
    ObjectiveSettings,
)

__all__ = ["DSM", "PROJECTIONS", "SSM", "tilted_score"]

#: Distributions of the slicing directions of ``ssm``; both have ``E[v vᵀ] = I``.
PROJECTIONS = ("gaussian", "rademacher")


def tilted_score(
    energy_params: Any, energy_static: Any, base_scale: float
) -> Callable[[jax.Array], jax.Array]:
    """The model's score ``x ↦ -∇ₓU_θ(x)``, ``U_θ = E_θ - log ρ``, ``ρ = N(0, σ² I)``.

    Args:
        energy_params: Array part of the energy.
        energy_static: The rest of the energy.
        base_scale: σ of the tilt ρ.

    Returns:
        A function from one point ``(d,)`` to its score ``(d,)``.

    Example:
        >>> import jax.numpy as jnp
        >>> score = tilted_score(None, lambda x: jnp.sum(x), 2.0)  # E(x) = x₁ + x₂
        >>> score(jnp.array([4.0, 0.0]))  # -∇E - x / σ²
        Array([-2., -1.], dtype=float32)
    """
    potential_fn = TiltedEnergy.from_parts(energy_params, energy_static, base_scale)
    return lambda x: -jax.grad(potential_fn)(x)


def _keyed_objective(
    name: str,
    prepare: Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any, Metrics]],
    loss: Callable[[Any, jax.Array, Any], tuple[jax.Array, Metrics]],
) -> Objective:
    """An objective whose state is only the PRNG key of its noise: no walkers, no flow."""

    def init(rng_key, walkers, energy_params):
        return typed_key(rng_key)

    return Objective(
        name=name,
        num_walkers=0,
        init=init,
        prepare=prepare,
        loss=loss,
        positions=lambda state: None,
        get_flow=lambda state: None,
        persistent=False,
    )


@dataclasses.dataclass(frozen=True)
class DSM(ObjectiveSettings):
    """Settings of ``dsm``, denoising score matching ([A]; several noise levels: [B], [C]).

    Each data point ``x`` gets a noise level ``σ`` (drawn uniformly from ``num_noise_levels``
    levels, geometric from ``min_noise_scale`` to ``noise_scale``; just ``noise_scale`` when
    ``num_noise_levels == 1``) and a noisy copy ``x̃ = x + σ ε``, ``ε ~ N(0, I)``. The loss is

        ``mean λ(σ)/2 ‖s_θ(x̃) + (x̃ - x)/σ²‖²``, ``s_θ = -∇U_θ``, ``λ(σ) = σ²`` ([B]),

    the regression of the model's score on ``∇ log N(x̃; x, σ² I)``. Its minimiser is the score
    of the *smoothed* data ``p_σ = p * N(0, σ² I)`` ([A]), not of ``p``: the trained model is
    ``p_σ`` (for Gaussian data ``N(μ, Σ)``, the precision ``(Σ + σ² I)⁻¹``). Small ``σ`` fits
    ``p`` more closely but gives a noisier loss. With several levels one unconditional energy
    fits all of them at once (the multi-scale DSM of [C], here with [B]'s weighting): the
    minimising score is the ``σ² p_σ``-weighted mean of the smoothed scores,
    ``Σᵢ σᵢ² p_σᵢ(x) ∇log p_σᵢ(x) / Σᵢ σᵢ² p_σᵢ(x)``, and for Gaussian data the best quadratic
    energy is the data smoothed at ``σ_eff² = mean σᵢ⁴ / mean σᵢ²``. ``λ = σ²`` makes every
    level's term of order 1 (``½‖σ s + ε‖²``).

    Attributes:
        noise_scale: σ of the noise; the largest level when ``num_noise_levels > 1``.
        num_noise_levels: Number of noise levels (1: single-scale DSM [A]).
        min_noise_scale: Smallest level when ``num_noise_levels > 1`` (ignored otherwise).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> context = ObjectiveContext(MLPEnergy(2, key=jax.random.key(0)), 2, 0.5, 8)
        >>> objective = DSM(noise_scale=0.5).build(context)
        >>> params, _ = context.energy_partition()
        >>> state = objective.init(jax.random.key(1), jnp.zeros((0, 2)), params)
        >>> x = jnp.zeros((8, 2))  # data at 0, smoothed by N(0, 0.5² I): exactly ρ (E ≡ 0)
        >>> state, batch, _ = objective.prepare(state, params, x)
        >>> float(objective.loss(params, x, batch)[0])
        0.0
    """

    name = "dsm"

    noise_scale: float = 0.1
    num_noise_levels: int = 1
    min_noise_scale: float = 0.01

    @override
    def check(self) -> None:
        positive_float("noise_scale", self.noise_scale)
        positive_int("num_noise_levels", self.num_noise_levels, 1)
        positive_float("min_noise_scale", self.min_noise_scale)
        if self.num_noise_levels > 1 and not self.min_noise_scale < self.noise_scale:
            raise ValueError(
                f"expected `min_noise_scale` < `noise_scale` = {self.noise_scale!r} with "
                f"{self.num_noise_levels} noise levels, got {self.min_noise_scale!r}"
            )

    def noise_scales(self) -> np.ndarray:
        """The noise levels σᵢ, smallest first (geometric; ``[noise_scale]`` for one level)."""
        if self.num_noise_levels == 1:
            return np.array([self.noise_scale])
        return np.geomspace(self.min_noise_scale, self.noise_scale, self.num_noise_levels)

    def build(self, context: ObjectiveContext) -> Objective:
        """The ``dsm`` objective: batch ``(x̃, σ)``, noise drawn in ``prepare``.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective.
        """
        _, energy_static = context.energy_partition()
        base_scale = context.base_scale
        noise_scales = self.noise_scales()

        def prepare(state, energy_params, positives):
            rng_key, key_level, key_noise = jax.random.split(state, 3)
            level = jax.random.randint(key_level, positives.shape[:1], 0, len(noise_scales))
            sigma = jnp.asarray(noise_scales, positives.dtype)[level]
            noise = jax.random.normal(key_noise, positives.shape, positives.dtype)
            return rng_key, (positives + sigma[:, None] * noise, sigma), {}

        def loss(energy_params, positives, batch):
            noisy, sigma = batch
            score = jax.vmap(tilted_score(energy_params, energy_static, base_scale))(noisy)
            # σ (s + (x̃ - x)/σ²), so that ½‖·‖² is λ(σ)/2 ‖s + (x̃ - x)/σ²‖² with λ = σ².
            residual = sigma[:, None] * score + (noisy - positives) / sigma[:, None]
            value = 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))
            return value, {"score_norm": jnp.mean(jnp.linalg.norm(score, axis=-1))}

        return _keyed_objective(self.name, prepare, loss)


@dataclasses.dataclass(frozen=True)
class SSM(ObjectiveSettings):
    """Settings of ``ssm``, sliced score matching, variance-reduced form ([D], SSM-VR).

    The loss is ``mean vᵀ∇ₓs_θ(x) v + ½‖s_θ(x)‖²`` over the data batch and
    ``num_projections`` directions ``v`` per point, with ``s_θ = -∇U_θ``. Since
    ``E[v vᵀ] = I``, its expectation is Hyvärinen's score-matching loss
    ``E[tr ∇s_θ + ½‖s_θ‖²]``, minimised by the score of the data itself (for Gaussian data
    ``N(μ, Σ)``: the precision ``Σ⁻¹``). ``vᵀ∇s v`` is a Jacobian-vector product of the
    score (forward-over-reverse), one per direction: no Hessian is formed.

    Attributes:
        projection: ``"rademacher"`` (entries ±1) or ``"gaussian"`` (``N(0, I)``).
            Rademacher directions give the trace estimator the lower variance
            (``2 Σ_{i≠j} Aᵢⱼ²`` against ``2 ‖A‖_F²`` for Gaussian ones, ``A`` the symmetric
            ``∇s``), hence the default.
        num_projections: Directions per data point; [D] finds 1 enough.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> context = ObjectiveContext(MLPEnergy(2, key=jax.random.key(0)), 2, 1.0, 8)
        >>> objective = SSM().build(context)
        >>> params, _ = context.energy_partition()
        >>> state = objective.init(jax.random.key(1), jnp.zeros((0, 2)), params)
        >>> x = jnp.zeros((8, 2))  # E ≡ 0: s(x) = -x, so vᵀ∇s v = -‖v‖² = -2 and s(0) = 0
        >>> state, batch, _ = objective.prepare(state, params, x)
        >>> float(objective.loss(params, x, batch)[0])
        -2.0
    """

    name = "ssm"

    projection: str = "rademacher"
    num_projections: int = 1

    @override
    def check(self) -> None:
        if self.projection not in PROJECTIONS:
            raise ValueError(f"expected `projection` in {PROJECTIONS}, got {self.projection!r}")
        positive_int("num_projections", self.num_projections, 1)

    def build(self, context: ObjectiveContext) -> Objective:
        """The ``ssm`` objective: batch = the directions ``(n, num_projections, d)``.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective.
        """
        _, energy_static = context.energy_partition()
        base_scale = context.base_scale
        draw = jax.random.rademacher if self.projection == "rademacher" else jax.random.normal
        num_projections = self.num_projections

        def prepare(state, energy_params, positives):
            rng_key, key_projection = jax.random.split(state)
            num_points, dim = positives.shape
            shape = (num_points, num_projections, dim)
            return rng_key, draw(key_projection, shape, positives.dtype), {}

        def loss(energy_params, positives, projections):
            score_fn = tilted_score(energy_params, energy_static, base_scale)

            def one_point(x, directions):
                # The score is computed once; only the tangents are batched over directions.
                score, jacobian_v = jax.vmap(
                    lambda v: jax.jvp(score_fn, (x,), (v,)), out_axes=(None, 0)
                )(directions)
                jacobian_term = jnp.mean(jnp.sum(directions * jacobian_v, axis=-1))
                return jacobian_term, 0.5 * jnp.sum(score**2)

            jacobian_terms, score_terms = jax.vmap(one_point)(positives, projections)
            jacobian_term, score_term = jnp.mean(jacobian_terms), jnp.mean(score_terms)
            metrics = {"jacobian_term": jacobian_term, "score_term": score_term}
            return jacobian_term + score_term, metrics

        return _keyed_objective(self.name, prepare, loss)
