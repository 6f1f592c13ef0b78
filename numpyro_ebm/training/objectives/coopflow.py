"""``coopflow``: cooperative learning of a Langevin flow and a normalizing flow [D].

Each step draws ``num_negatives`` points from a normalizing flow ``q_α``, revises them with
``K`` ULA steps on the current tilted model ``exp(-E_θ) ρ`` (:func:`~numpyro_ebm.training.
objectives.langevin_chains.langevin_chains`), uses the revised points as the negatives of
:func:`~numpyro_ebm.training.objectives.ebm_loss`, and takes ``num_fit_steps``
maximum-likelihood steps of the flow on them (:func:`~numpyro_ebm.flows.fit_flow`): the flow
learns to absorb the Langevin revision, so that its draws start the chains ever closer to the
model [D, Alg. 1]. [A] compares flow-assisted training with this scheme. The flow is
:func:`~numpyro_ebm.flows.default_flow`, started as ρ (as ``nt``'s flow).

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
    [D] J. Xie, Y. Zhu, J. Li, P. Li, S.-C. Zhu, *A Tale of Two Flows: Cooperative Learning of
    Langevin Flow and Normalizing Flow Toward Energy-Based Model*, ICLR (2022).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, override

import jax

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm.flows import default_flow, fit_flow, flow_optimizer, merge_flow, split_flow
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

__all__ = ["CoopFlow", "CoopFlowState"]

#: Seed of the flow's initial conditioner weights (as ``nt``'s ``flow_seed``).
_FLOW_SEED = 0


class CoopFlowState(NamedTuple):
    """State of ``coopflow``.

    Attributes:
        flow_params: Trainable arrays of the flow.
        opt_state: The flow optimizer's state.
        negatives: The last revised draws ``(num_negatives, d)``; draws from ρ (the initial
            flow) before the first step.
        rng_key: PRNG key.
    """

    flow_params: Any
    opt_state: Any
    negatives: jax.Array
    rng_key: jax.Array


@dataclasses.dataclass(frozen=True)
class CoopFlow(ObjectiveSettings):
    """Settings of ``coopflow``: flow draws revised by K ULA steps are the negatives [D].

    Attributes:
        num_negatives: Flow draws (negatives) per EBM step.
        num_steps: ULA steps ``K`` that revise each draw; [D] uses ``K = 30``.
        step_size: ULA step ``η``; by default [A]'s ``(0.125)²/2``, as ``pcd`` with ULA.
        num_fit_steps: Maximum-likelihood steps of the flow per EBM step, each on
            ``num_negatives`` points drawn (with replacement) from the revised ones.
        flow_learning_rate: Adam learning rate of the flow (as ``pcd``'s).
        l2_penalty: Weight of ``mean E(x⁺)² + mean E(x⁻)²`` in the loss.

    Example:
        >>> CoopFlow(num_steps=10).to_dict()["num_steps"]
        10
    """

    name = "coopflow"

    num_negatives: int = 256
    num_steps: int = 30
    step_size: float = ULA_STEP_SIZE
    num_fit_steps: int = 1
    flow_learning_rate: float = 1e-3
    l2_penalty: float = 0.0

    @override
    def check(self) -> None:
        check_chain_settings("ula", self.num_steps, self.step_size, self.l2_penalty)
        positive_int("num_negatives", self.num_negatives, 2)
        positive_int("num_fit_steps", self.num_fit_steps)
        positive_float("flow_learning_rate", self.flow_learning_rate)

    def build(self, context: ObjectiveContext) -> Objective:
        """The ``coopflow`` objective: revised flow draws are the negatives; the flow follows.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective (no walkers from the trainer: ``num_walkers == 0``).

        Example:
            >>> import jax, equinox as eqx
            >>> from numpyro_ebm.energies import MLPEnergy
            >>> energy = MLPEnergy(2, width=4, depth=1, key=jax.random.key(0))
            >>> params = eqx.filter(energy, eqx.is_array)
            >>> settings = CoopFlow(num_negatives=8, num_steps=2)
            >>> objective = settings.build(ObjectiveContext(energy, 2, 1.0, 8))
            >>> state = objective.init(jax.random.key(1), jax.numpy.zeros((0, 2)), params)
            >>> state, negatives, metrics = objective.prepare(state, params, jax.numpy.ones((8, 2)))
            >>> negatives.shape, sorted(metrics), objective.get_flow(state).shape
            ((8, 2), ['accept_prob', 'flow_loss'], (2,))
        """
        _, energy_static = context.energy_partition()
        dim, base_scale = context.dim, context.base_scale
        optimizer = flow_optimizer(self.flow_learning_rate)
        flow_params, flow_static = split_flow(
            default_flow(jax.random.key(_FLOW_SEED), dim, loc=0.0, scale=base_scale)
        )

        def init(rng_key, walkers, energy_params):
            key_state, key_start = jax.random.split(typed_key(rng_key))
            start = draw_base(key_start, self.num_negatives, dim, base_scale)
            return CoopFlowState(flow_params, optimizer.init(flow_params), start, key_state)

        def prepare(state, energy_params, positives):
            rng_key, key_draws, key_chains, key_fit = jax.random.split(state.rng_key, 4)
            flow = merge_flow(state.flow_params, flow_static)
            draws = flow.sample(key_draws, (self.num_negatives,))
            negatives, accept_prob = langevin_chains(
                key_chains,
                draws,
                energy_params,
                energy_static,
                base_scale,
                num_steps=self.num_steps,
                step_size=self.step_size,
            )
            params, opt_state, flow_loss = fit_flow(
                key_fit,
                state.flow_params,
                state.opt_state,
                flow_static,
                negatives,
                optimizer=optimizer,
                num_steps=self.num_fit_steps,
                batch_size=self.num_negatives,
            )
            new_state = CoopFlowState(params, opt_state, negatives, rng_key)
            metrics = {"accept_prob": accept_prob, "flow_loss": flow_loss.astype(negatives.dtype)}
            return new_state, negatives, metrics

        return Objective(
            name=self.name,
            num_walkers=0,
            init=init,
            prepare=prepare,
            loss=contrastive_loss_fn(energy_static, self.l2_penalty),
            positions=lambda state: state.negatives,
            get_flow=lambda state: merge_flow(state.flow_params, flow_static),
            persistent=False,
        )
