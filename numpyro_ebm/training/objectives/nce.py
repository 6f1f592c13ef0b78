"""``nce``: noise-contrastive estimation against a flow trained alongside ([A], [B]).

The model ``p_θ ∝ exp(-U_θ)``, ``U_θ = E_θ - log ρ`` (the tilt ``ρ`` is part of the model),
is told apart from a noise distribution ``q``, a normalizing flow, by logistic regression on
the log-odds ``G(x) = -U_θ(x) - log q(x) - log ν``, with ``ν`` noise draws per data point
([A]). NCE treats ``exp(-U_θ)`` as a *normalised* density: the model learns its own log
normaliser as the additive constant of ``E_θ``. The energy must therefore be able to shift by a
constant; :class:`~numpyro_ebm.energies.MLPEnergy` can, through the bias of its output layer.

The flow is trained at the same time, either adversarially (flow contrastive estimation [B]:
it minimises the value function the EBM maximises, so its samples become hard to tell from
the data) or by maximum likelihood on the data (a steadier variant).

References:
    [A] M. Gutmann, A. Hyvärinen, *Noise-Contrastive Estimation: A New Estimation Principle
    for Unnormalized Statistical Models*, AISTATS (2010).
    [B] R. Gao, E. Nijkamp, D. P. Kingma, Z. Xu, A. M. Dai, Y. N. Wu, *Flow Contrastive
    Estimation of Energy-Based Models*, CVPR (2020).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, override

import jax
import jax.numpy as jnp
import optax

from numpyro_ebm._checks import positive_float, typed_key
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.flows import default_flow, flow_optimizer, merge_flow, split_flow
from numpyro_ebm.training.objectives.base import (
    Metrics,
    Objective,
    ObjectiveContext,
    ObjectiveSettings,
)

__all__ = ["FLOW_OBJECTIVES", "NCE", "NCEState", "nce_loss"]

#: How the noise flow of ``nce`` is trained: ``"fce"`` ([B]) or ``"mle"``.
FLOW_OBJECTIVES = ("fce", "mle")
#: Seed of the flow's initial conditioner weights (the flow starts within 1e-2 of ρ anyway).
_FLOW_SEED = 0


class NCEState(NamedTuple):
    """State of ``nce``.

    Attributes:
        flow_params: Trainable arrays of the noise flow ``q``.
        opt_state: The flow optimizer's state.
        rng_key: PRNG key of the noise draws.
    """

    flow_params: Any
    opt_state: Any
    rng_key: jax.Array


def nce_loss(
    positive_potential: jax.Array,
    negative_potential: jax.Array,
    positive_flow_log_prob: jax.Array,
    negative_flow_log_prob: jax.Array,
) -> tuple[jax.Array, Metrics]:
    """Noise-contrastive loss from the model's potentials and the noise's log densities ([A]).

    With ``ν = m / n`` noise points per data point and ``G = -U - log q - log ν``, the loss is
    ``-mean log σ(G(x⁺)) - ν mean log(1 - σ(G(x⁻)))``, minus the NCE value function ``V``.
    The model minimises it; it is smallest when ``exp(-U)`` is the normalised data density.

    Args:
        positive_potential: ``U(x⁺)`` of the data, ``(n,)``.
        negative_potential: ``U(x⁻)`` of the noise draws, ``(m,)``.
        positive_flow_log_prob: ``log q(x⁺)``, ``(n,)``.
        negative_flow_log_prob: ``log q(x⁻)``, ``(m,)``.

    Returns:
        ``(loss, metrics)``, metrics ``classification_accuracy`` (share of all points on the
        right side of ``G = 0``) and ``log_odds_gap`` (``mean G(x⁺) - mean G(x⁻)``).

    Example:
        >>> import jax.numpy as jnp
        >>> zero, one = jnp.zeros(4), jnp.ones(4)  # ν = 1, G(x⁺) = 1, G(x⁻) = -1
        >>> loss, metrics = nce_loss(-one, one, zero, zero)
        >>> round(float(loss), 4), float(metrics["classification_accuracy"])  # 2 log(1 + e⁻¹)
        (0.6265, 1.0)
    """
    ratio = negative_potential.shape[0] / positive_potential.shape[0]
    positive_log_odds = -positive_potential - positive_flow_log_prob - math.log(ratio)
    negative_log_odds = -negative_potential - negative_flow_log_prob - math.log(ratio)
    # -log σ(G) = softplus(-G), -log(1 - σ(G)) = softplus(G): stable for any G.
    value = jnp.mean(jax.nn.softplus(-positive_log_odds)) + ratio * jnp.mean(
        jax.nn.softplus(negative_log_odds)
    )
    correct = jnp.sum(positive_log_odds > 0) + jnp.sum(negative_log_odds < 0)
    metrics = {
        "classification_accuracy": correct / (positive_log_odds.size + negative_log_odds.size),
        "log_odds_gap": jnp.mean(positive_log_odds) - jnp.mean(negative_log_odds),
    }
    return value, metrics


@dataclasses.dataclass(frozen=True)
class NCE(ObjectiveSettings):
    """Settings of ``nce``, noise-contrastive estimation against a flow ([A]; FCE [B]).

    Each step, in ``prepare``: ``round(noise_ratio · n)`` noise points are drawn from the flow
    ``q`` (reparameterised), the flow takes one Adam step on them and on the data batch with
    the current energy held fixed, and ``log q`` of the data and of the noise (both constants
    for the energy) are passed on. The energy's loss is :func:`nce_loss` on those draws; its
    additive constant learns the log normaliser, so the trained ``exp(-U_θ)`` is normalised.

    ``positions`` is ``None``: the noise draws are fresh i.i.d. flow samples, neither model
    samples nor Markov chains (use the flow, ``get_flow``, as a proposal to sample the model).

    Attributes:
        noise_ratio: ν, noise draws per data point; [B]'s value function has ν = 1. A
            larger ν lowers the estimator's variance toward maximum likelihood's ([A]).
        flow_objective: ``"fce"``: the flow *minimises* the NCE value function ``V`` that the
            energy maximises, differentiating through its samples and ``log q`` of the data
            ([B]); its metric ``flow_loss`` is ``V``. ``"mle"``: the flow maximises its
            likelihood of the data batch (steadier; ``flow_loss`` is ``-mean log q(x⁺)``).
        flow_learning_rate: Adam learning rate of the flow.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> context = ObjectiveContext(MLPEnergy(2, width=4, key=jax.random.key(0)), 2, 1.0, 8)
        >>> objective = NCE(noise_ratio=2.0).build(context)
        >>> params, _ = context.energy_partition()
        >>> state = objective.init(jax.random.key(1), jnp.zeros((0, 2)), params)
        >>> x = jax.random.normal(jax.random.key(2), (8, 2))
        >>> state, batch, metrics = jax.jit(objective.prepare)(state, params, x)
        >>> batch[0].shape, objective.get_flow(state).shape  # 16 noise draws
        ((16, 2), (2,))
        >>> loss, metrics = objective.loss(params, x, batch)
        >>> bool(jnp.isfinite(loss))
        True
    """

    name = "nce"

    noise_ratio: float = 1.0
    flow_objective: str = "fce"
    flow_learning_rate: float = 1e-3

    @override
    def check(self) -> None:
        positive_float("noise_ratio", self.noise_ratio)
        if self.flow_objective not in FLOW_OBJECTIVES:
            raise ValueError(
                f"expected `flow_objective` in {FLOW_OBJECTIVES}, got {self.flow_objective!r}"
            )
        positive_float("flow_learning_rate", self.flow_learning_rate)

    def num_noise(self, batch_size: int) -> int:
        """Noise draws per step for a data batch of ``batch_size`` (at least 1)."""
        return max(1, round(self.noise_ratio * batch_size))

    def build(self, context: ObjectiveContext) -> Objective:
        """The ``nce`` objective: batch ``(x⁻, log q(x⁻), log q(x⁺))``, flow step in prepare.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective.
        """
        _, energy_static = context.energy_partition()
        base_scale = context.base_scale
        num_noise = self.num_noise(context.batch_size)
        fce = self.flow_objective == "fce"
        optimizer = flow_optimizer(self.flow_learning_rate)
        initial_flow_params, flow_static = split_flow(
            default_flow(jax.random.key(_FLOW_SEED), context.dim, loc=0.0, scale=base_scale)
        )

        def contrast(energy_params, positives, batch):
            negatives, negative_flow_log_prob, positive_flow_log_prob = batch
            potential_fn = jax.vmap(
                TiltedEnergy.from_parts(energy_params, energy_static, base_scale)
            )
            return nce_loss(
                potential_fn(positives),
                potential_fn(negatives),
                positive_flow_log_prob,
                negative_flow_log_prob,
            )

        def flow_loss(flow_params, key, energy_params, positives):
            flow = merge_flow(flow_params, flow_static)
            negatives, negative_flow_log_prob = flow.sample_and_log_prob(key, (num_noise,))
            batch = (negatives, negative_flow_log_prob, flow.log_prob(positives))
            if fce:
                value = -contrast(energy_params, positives, batch)[0]
            else:
                value = -jnp.mean(batch[2])
            return value, batch

        def init(rng_key, walkers, energy_params):
            return NCEState(
                initial_flow_params, optimizer.init(initial_flow_params), typed_key(rng_key)
            )

        def prepare(state, energy_params, positives):
            rng_key, key_noise = jax.random.split(state.rng_key)
            energy_params = jax.lax.stop_gradient(energy_params)
            (value, batch), grads = jax.value_and_grad(flow_loss, has_aux=True)(
                state.flow_params, key_noise, energy_params, positives
            )
            updates, opt_state = optimizer.update(grads, state.opt_state, state.flow_params)
            flow_params = optax.apply_updates(state.flow_params, updates)
            # The energy's batch comes from the flow before its step, the one `value` is of.
            batch = jax.lax.stop_gradient(batch)
            return NCEState(flow_params, opt_state, rng_key), batch, {"flow_loss": value}

        return Objective(
            name=self.name,
            num_walkers=0,
            init=init,
            prepare=prepare,
            loss=contrast,
            positions=lambda state: None,
            get_flow=lambda state: merge_flow(state.flow_params, flow_static),
            persistent=False,
        )
