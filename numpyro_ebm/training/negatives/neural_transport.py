"""``nt`` negatives: MALA in the latent space of a flow fitted on the negatives (NT-EBM, [A]).

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
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.flows import default_flow, fit_flow, flow_optimizer, merge_flow, split_flow
from numpyro_ebm.samplers.adaptation import adapt_step_size
from numpyro_ebm.samplers.langevin import init_walkers, mala_step
from numpyro_ebm.training.negatives.base import NegativeInfo, NegativeSampler, check_positions

__all__ = ["NT_TARGET_ACCEPT_PROB", "NTState", "nt_sampler"]

#: MALA acceptance targeted by NT-EBM in [A] (METHOD.md §3).
NT_TARGET_ACCEPT_PROB = 0.75


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
    _, energy_static = eqx.partition(energy, eqx.is_inexact_array)
    optimizer = flow_optimizer(flow_learning_rate)
    flow_params, flow_static = split_flow(
        default_flow(jax.random.key(flow_seed), dim, loc=0.0, scale=base_scale)
    )

    def init(rng_key, positions, energy_params):
        positions = check_positions(positions, dim)
        return NTState(
            position=positions,
            step_size=jnp.array(step_size, positions.dtype),
            flow_params=flow_params,
            opt_state=optimizer.init(flow_params),
            round_index=jnp.array(0),
            rng_key=typed_key(rng_key),
        )

    def step(state, energy_params):
        potential_fn = TiltedEnergy.from_parts(energy_params, energy_static, base_scale)
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
        info = NegativeInfo(mean_accept_prob, flow_loss=flow_loss.astype(position.dtype))
        return new_state, info

    def positions(state):
        return state.position

    def get_flow(state):
        return merge_flow(state.flow_params, flow_static)

    return NegativeSampler("nt", init, step, positions, get_flow)
