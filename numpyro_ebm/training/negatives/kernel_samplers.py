"""``flowmc`` and ``mala`` negatives: :class:`~numpyro_ebm.FlowMCKernel` on the EBM.

They do not copy the sampler: they call the very ``init`` and ``sample`` of
:class:`~numpyro_ebm.FlowMCKernel`, with the EBM's parameters as the model's argument.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm.energies import ebm_model
from numpyro_ebm.flows import default_flow
from numpyro_ebm.kernel import FlowMCKernel
from numpyro_ebm.training.negatives.base import NegativeInfo, NegativeSampler, check_positions

__all__ = ["flowmc_sampler", "mala_sampler"]

#: Adaptation "never stops" inside training (METHOD.md §2): a warm-up longer than any run,
#: kept well inside int32 because the kernel compares it with its int32 iteration counter.
_ENDLESS_WARMUP = 2**30


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
    _, energy_static = eqx.partition(energy, eqx.is_inexact_array)
    model = ebm_model(energy_static, dim, base_scale=base_scale)
    # The flow starts as ρ = N(0, σ² I) exactly, so model and flow start equal (METHOD.md §1),
    # or as the flow an energy names as its start (a FlowBaseEnergy's q₀: again the model).
    initial_flow = getattr(energy, "initial_flow", None)
    if initial_flow is not None:
        flow = initial_flow()
    else:
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
        adapt_num_particles=False,  # all particles, as the flow is fitted every round
    )

    def init(rng_key, positions, energy_params):
        positions = check_positions(positions, dim)
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
                jnp.mean(state.stranded, dtype=state.accept_prob.dtype),
            )

        state, (accept_prob, global_accept_prob, flow_loss, stranded) = jax.lax.scan(
            one_round, state, length=num_rounds
        )
        if global_move == "none":  # persistent MALA: no flow, no global move
            return state, NegativeInfo(jnp.mean(accept_prob))
        # The flow is fitted on the first round of each EBM step (`fit_every=num_rounds`).
        return state, NegativeInfo(
            jnp.mean(accept_prob), jnp.mean(global_accept_prob), flow_loss[0], jnp.mean(stranded)
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
