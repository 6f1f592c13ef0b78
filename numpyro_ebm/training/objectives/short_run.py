"""``short-run``: non-persistent short-run Langevin from noise [C], optionally from a buffer [F].

Each step draws ``num_negatives`` start points from the tilt ρ (the noise), runs ``K`` ULA
steps on the current tilted model ``exp(-E_θ) ρ`` (:func:`~numpyro_ebm.training.objectives.
langevin_chains.langevin_chains`) and uses the end points as the negatives of
:func:`~numpyro_ebm.training.objectives.ebm_loss` [C]. What is learned is then chiefly the
short-run sampler: at a fixed point of learning the K-step chains from noise reproduce the
data's statistics ``E[∂E_θ/∂θ]`` (the "moment matching" of [C] §3), whether or not
``exp(-E_θ) ρ`` itself is the data density.

With ``buffer_size > 0`` the chains start instead from a replay buffer [F]: each step takes
``num_negatives`` distinct points of the buffer, replaces each by a fresh draw from ρ with
probability ``reinit_prob``, runs the ``K`` steps and writes the end points back. The buffer
starts as draws from ρ; chains that survive many steps become long-run chains of the
changing model, which pulls ``exp(-E_θ) ρ`` itself toward the data [F].

References:
    [C] E. Nijkamp, M. Hill, S.-C. Zhu, Y. N. Wu, *Learning Non-Convergent Non-Persistent
    Short-Run MCMC Toward Energy-Based Model*, NeurIPS (2019).
    [F] Y. Du, I. Mordatch, *Implicit Generation and Generalization in Energy-Based Models*,
    NeurIPS (2019).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, override

import jax
import jax.numpy as jnp

from numpyro_ebm._checks import positive_int, typed_key
from numpyro_ebm.training.negatives import ULA_STEP_SIZE, check_positions
from numpyro_ebm.training.objectives.base import (
    Objective,
    ObjectiveContext,
    ObjectiveSettings,
    contrastive_loss_fn,
)
from numpyro_ebm.training.objectives.langevin_chains import (
    check_chain_settings,
    draw_base,
    langevin_chains,
)

__all__ = ["ShortRun", "ShortRunState"]


class ShortRunState(NamedTuple):
    """State of ``short-run``.

    Attributes:
        buffer: The replay buffer ``(buffer_size, d)``; ``(0, d)`` without one.
        negatives: The last negatives ``(num_negatives, d)``; draws from ρ before the first
            step.
        rng_key: PRNG key.
    """

    buffer: jax.Array
    negatives: jax.Array
    rng_key: jax.Array


@dataclasses.dataclass(frozen=True)
class ShortRun(ObjectiveSettings):
    """Settings of ``short-run``: K-step ULA from noise [C], or from a replay buffer [F].

    Attributes:
        num_negatives: Chains (negatives) per EBM step.
        num_steps: ULA steps ``K`` per chain; [C] uses ``K = 100``.
        step_size: ULA step ``η``; by default [A]'s ``(0.125)²/2``, as ``pcd`` with ULA.
        buffer_size: Points in the replay buffer [F]; 0 for pure short-run from noise [C].
            At least ``num_negatives`` otherwise.
        reinit_prob: Probability that a point taken from the buffer restarts from ρ; [F]
            uses 0.05.
        l2_penalty: Weight of ``mean E(x⁺)² + mean E(x⁻)²`` in the loss ([F] uses one).

    Example:
        >>> ShortRun(buffer_size=1024).to_dict()["reinit_prob"]
        0.05
    """

    name = "short-run"

    num_negatives: int = 256
    num_steps: int = 100
    step_size: float = ULA_STEP_SIZE
    buffer_size: int = 0
    reinit_prob: float = 0.05
    l2_penalty: float = 0.0

    @override
    def check(self) -> None:
        check_chain_settings("ula", self.num_steps, self.step_size, self.l2_penalty)
        positive_int("num_negatives", self.num_negatives, 2)
        positive_int("buffer_size", self.buffer_size, 0)
        if 0 < self.buffer_size < self.num_negatives:
            raise ValueError(
                f"expected `buffer_size` 0 (no buffer) or >= num_negatives = "
                f"{self.num_negatives}, got {self.buffer_size!r}"
            )
        if isinstance(self.reinit_prob, bool) or not (
            isinstance(self.reinit_prob, int | float) and 0 <= self.reinit_prob <= 1
        ):
            raise ValueError(f"expected `reinit_prob` in [0, 1], got {self.reinit_prob!r}")

    def build(self, context: ObjectiveContext) -> Objective:
        """The ``short-run`` objective: K ULA steps from noise (or the buffer) are the negatives.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective; ``num_walkers`` is ``buffer_size`` (the buffer's first draws
            from ρ).

        Example:
            >>> import jax, equinox as eqx
            >>> from numpyro_ebm.energies import MLPEnergy
            >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
            >>> params = eqx.filter(energy, eqx.is_array)
            >>> settings = ShortRun(num_negatives=4, num_steps=2, buffer_size=16)
            >>> objective = settings.build(ObjectiveContext(energy, 2, 1.0, 8))
            >>> state = objective.init(jax.random.key(1), jax.numpy.zeros((16, 2)), params)
            >>> state, negatives, _ = objective.prepare(state, params, jax.numpy.ones((8, 2)))
            >>> negatives.shape, objective.positions(state).shape
            ((4, 2), (16, 2))
        """
        _, energy_static = context.energy_partition()
        dim, base_scale = context.dim, context.base_scale

        def init(rng_key, walkers, energy_params):
            key_state, key_start = jax.random.split(typed_key(rng_key))
            if self.buffer_size:
                buffer = check_positions(walkers, dim)
                if buffer.shape[0] != self.buffer_size:
                    raise ValueError(
                        f"expected {self.buffer_size} initial buffer points, got {buffer.shape[0]}"
                    )
            else:
                buffer = jnp.zeros((0, dim))
            start = draw_base(key_start, self.num_negatives, dim, base_scale)
            return ShortRunState(buffer, start, key_state)

        def starts(key, buffer):
            """Start points: noise, or buffer rows with some reset to noise; and the rows."""
            key_noise, key_rows, key_reinit = jax.random.split(key, 3)
            noise = draw_base(key_noise, self.num_negatives, dim, base_scale)
            if not self.buffer_size:
                return noise, None
            rows = jax.random.permutation(key_rows, self.buffer_size)[: self.num_negatives]
            reinit = jax.random.bernoulli(key_reinit, self.reinit_prob, (self.num_negatives, 1))
            return jnp.where(reinit, noise, buffer[rows]), rows

        def prepare(state, energy_params, positives):
            rng_key, key_starts, key_chains = jax.random.split(state.rng_key, 3)
            start, rows = starts(key_starts, state.buffer)
            negatives, accept_prob = langevin_chains(
                key_chains,
                start,
                energy_params,
                energy_static,
                base_scale,
                num_steps=self.num_steps,
                step_size=self.step_size,
            )
            buffer = state.buffer if rows is None else state.buffer.at[rows].set(negatives)
            new_state = ShortRunState(buffer, negatives, rng_key)
            return new_state, negatives, {"accept_prob": accept_prob}

        def positions(state):
            return state.buffer if self.buffer_size else state.negatives

        return Objective(
            name=self.name,
            num_walkers=self.buffer_size,
            init=init,
            prepare=prepare,
            loss=contrastive_loss_fn(energy_static, self.l2_penalty),
            positions=positions,
            get_flow=lambda state: None,
            persistent=False,
        )
