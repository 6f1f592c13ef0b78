"""``cd``: contrastive divergence CD-k [B], negatives = k Langevin steps from the data batch.

Each step starts one Langevin chain (ULA or MALA, :func:`~numpyro_ebm.training.objectives.
langevin_chains.langevin_chains`) at every point of the data batch, runs ``k`` steps on the
current tilted model ``exp(-E_θ) ρ`` and uses the end points as the negatives of
:func:`~numpyro_ebm.training.objectives.ebm_loss`. Nothing persists between steps but a PRNG
key (and the last negatives, kept for inspection).

CD-k follows a biased gradient for finite ``k`` [B, E]: its fixed points are models whose
``k``-step chain leaves the data's statistics unchanged, not the maximum-likelihood ones in
general (they coincide when the model family holds the data distribution and the kernel
leaves the model exactly invariant, as MALA does). With small Langevin steps the negatives
stay close to the data, so the gradient is small and noisy and training is slow to converge,
chiefly along directions that the chain explores slowly (low-density regions, other modes).

References:
    [B] G. E. Hinton, *Training Products of Experts by Minimizing Contrastive Divergence*,
    Neural Computation 14 (2002).
    [E] M. Á. Carreira-Perpiñán, G. E. Hinton, *On Contrastive Divergence Learning*,
    AISTATS (2005).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, override

import jax

from numpyro_ebm._checks import typed_key
from numpyro_ebm.training.negatives import ULA_STEP_SIZE
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

__all__ = ["CD", "CDState"]


class CDState(NamedTuple):
    """State of ``cd``.

    Attributes:
        negatives: The last negatives ``(batch_size, d)``; draws from ρ before the first step.
        rng_key: PRNG key.
    """

    negatives: jax.Array
    rng_key: jax.Array


@dataclasses.dataclass(frozen=True)
class CD(ObjectiveSettings):
    """Settings of ``cd``, contrastive divergence CD-k [B] with Langevin steps from the data.

    Attributes:
        sampler: ``"ula"`` or ``"mala"``.
        num_steps: Langevin steps ``k`` from each data point; ``k = 1`` is Hinton's CD-1 [B].
        step_size: Langevin step ``η``; by default [A]'s ULA step ``(0.125)²/2``, so that
            ``cd`` and ``pcd`` with ``sampler="ula"`` compare at the same step.
        l2_penalty: Weight of ``mean E(x⁺)² + mean E(x⁻)²`` in the loss.

    Example:
        >>> CD(num_steps=3, sampler="mala").to_dict()
        {'name': 'cd', 'sampler': 'mala', 'num_steps': 3, 'step_size': 0.0078125, 'l2_penalty': 0.0}
    """

    name = "cd"

    sampler: str = "ula"
    num_steps: int = 1
    step_size: float = ULA_STEP_SIZE
    l2_penalty: float = 0.0

    @override
    def check(self) -> None:
        check_chain_settings(self.sampler, self.num_steps, self.step_size, self.l2_penalty)

    def build(self, context: ObjectiveContext) -> Objective:
        """The ``cd`` objective: ``k`` Langevin steps from each data point are its negatives.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective (no persistent walkers: ``num_walkers == 0``).

        Example:
            >>> import jax, equinox as eqx
            >>> from numpyro_ebm.energies import MLPEnergy
            >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
            >>> params = eqx.filter(energy, eqx.is_array)
            >>> objective = CD().build(ObjectiveContext(energy, 2, 1.0, 8))
            >>> state = objective.init(jax.random.key(1), jax.numpy.zeros((0, 2)), params)
            >>> state, negatives, metrics = objective.prepare(state, params, jax.numpy.ones((8, 2)))
            >>> negatives.shape, float(metrics["accept_prob"])
            ((8, 2), 1.0)
        """
        _, energy_static = context.energy_partition()

        def init(rng_key, walkers, energy_params):
            key_state, key_start = jax.random.split(typed_key(rng_key))
            start = draw_base(key_start, context.batch_size, context.dim, context.base_scale)
            return CDState(start, key_state)

        def prepare(state, energy_params, positives):
            rng_key, key_chains = jax.random.split(state.rng_key)
            negatives, accept_prob = langevin_chains(
                key_chains,
                positives,
                energy_params,
                energy_static,
                context.base_scale,
                num_steps=self.num_steps,
                step_size=self.step_size,
                sampler=self.sampler,
            )
            return CDState(negatives, rng_key), negatives, {"accept_prob": accept_prob}

        return Objective(
            name=self.name,
            num_walkers=0,
            init=init,
            prepare=prepare,
            loss=contrastive_loss_fn(energy_static, self.l2_penalty),
            positions=lambda state: state.negatives,
            get_flow=lambda state: None,
            persistent=False,
        )
