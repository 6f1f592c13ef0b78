"""``FlowMCKernel``: flow-assisted MCMC as a NumPyro ensemble kernel.

The kernel is a thin adapter: it turns a NumPyro ``model`` (or a ``potential_fn``) into a
potential over a flat unconstrained vector, and calls the pure round of
:mod:`numpyro_ebm.samplers.flowmc` once per MCMC iteration. NumPyro's ``num_chains`` walkers share
one normalizing flow, so ``MCMC`` must run them with ``chain_method="vectorized"``.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).

    M. Gabrié, G. M. Rotskoff, E. Vanden-Eijnden, *Adaptive Monte Carlo augmented with
    normalizing flows*, PNAS 119 (2022) e2109420119 — the flowMC algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flowjax.distributions import AbstractDistribution
from jax.flatten_util import ravel_pytree
from numpyro.infer.ensemble_util import batch_ravel_pytree
from numpyro.infer.initialization import init_to_sample
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import identity

from numpyro_ebm._checks import key_impl_name, positive_float, positive_int, seed_value, typed_key
from numpyro_ebm._far_probes import check_potential_rises, energy_with_probes
from numpyro_ebm._init_params import initialize_walkers, num_walkers_of
from numpyro_ebm._kernel_setup import (
    DEFAULT_TARGET_ACCEPT_PROB,
    check_kernel_arguments,
    flat_potential,
    kernel_default_flow,
    num_particle_chunks,
    round_config,
    round_options,
    walker_sharding,
    warn_if_untuned,
)
from numpyro_ebm._pickling import kernel_getstate, kernel_setstate, latent_template
from numpyro_ebm._start_checks import warn_about_start
from numpyro_ebm.flows import flow_optimizer, split_flow
from numpyro_ebm.health import warn_after_warmup
from numpyro_ebm.kernel_state import DEFAULT_FIELDS, FlowMCState, initial_state, next_state
from numpyro_ebm.samplers.flowmc import flowmc_round, proposal_flow
from numpyro_ebm.samplers.warmup import init_adaptation

__all__ = ["FlowMCKernel", "FlowMCState"]


class FlowMCKernel(MCMCKernel):
    """Flow-assisted MCMC ([A] Alg. 5, the flowMC sampler) for NumPyro's ``MCMC``.

    The ``num_chains`` chains of ``MCMC`` are walkers sharing one normalizing flow. Each
    iteration makes one global move with the flow (i-SIR with ``num_particles`` particles, or
    independent Metropolis–Hastings) and ``num_local_steps`` MALA steps. During warm-up

    - the walkers' mean and spread over the last rounds (diagonal, or dense covariance)
      precondition MALA and standardise the default flow, so any location and scale works;
    - the MALA step size is adapted toward ``target_accept_prob`` by dual averaging;
    - the flow is fitted by maximum likelihood on the walkers' recent positions;
    - when the walkers move far (by more than their spread), a new adaptation window starts and
      positions from before are no longer fitted (:mod:`numpyro_ebm.samplers.adaptation`).

    Afterwards everything is frozen, so the kept draws come from a fixed Markov kernel that
    leaves the target invariant.

    The flow works in NumPyro's unconstrained space; ``postprocess_fn`` returns constrained
    values, as for NUTS.

    Args:
        model: A NumPyro model. Exactly one of ``model`` and ``potential_fn`` is given.
        potential_fn: ``U = -log p`` of one walker's unconstrained parameters (flowMC's
            ``log_prob`` is ``-U``); then ``init_params`` go to ``MCMC.run``, walker axis first.
        init_strategy: Per-site initialisation, as for NumPyro's kernels. By default each
            walker starts at its own draw from the prior (NumPyro's ``init_to_sample``, which
            falls back to ``init_to_uniform`` for improper sites): a flow can only propose
            modes that walkers have found, and prior draws spread the walkers over the region
            where a posterior's modes lie, wherever that is.
        flow: A pre-fitted flowjax flow over the flat unconstrained space (as returned by
            :meth:`get_flow`), used as given: it is not re-standardised. By default the
            coupling flow of :func:`numpyro_ebm.flows.default_flow`, acting on coordinates
            standardised by the walkers' moments. The kernel (and an ``MCMC`` holding it)
            pickles if the flow comes from ``default_flow`` or :meth:`get_flow`, or is made
            of picklable parts such as flowjax's ``Normal``.
        flow_options: Keyword arguments of :func:`numpyro_ebm.flows.default_flow` (e.g.
            ``transformer``, ``flow_layers``, ``nn_width``) for the default flow. Unless set,
            the transformer is ``"affine"`` (``"spline"`` is more flexible and costlier).
        fit_flow: Fit the flow during warm-up. With ``False`` the flow is used as given.
        global_move: ``"isir"`` (default, [A]), ``"imh"``, or ``"none"`` (MALA only).
        num_particles: i-SIR particles per walker and iteration, the current state included.
        num_local_steps: MALA steps per iteration.
        step_size: Initial MALA step size, in coordinates standardised by the walkers' spread.
        target_accept_prob: MALA acceptance targeted during warm-up.
        learning_rate: Adam learning rate of the flow.
        fit_every: Iterations between flow fits during warm-up.
        num_fit_steps: Gradient steps per flow fit.
        fit_batch_size: Points per flow gradient step.
        buffer_size: Iterations of walker positions kept to fit the flow on.
        particle_chunk_size: i-SIR particles per walker drawn at once; by default the largest
            number that fits ``memory_budget_bytes``.
        memory_budget_bytes: Scratch memory allowed for one chunk of i-SIR particles,
            the potential's own included (XLA's estimate, e.g. a model's data plate).
        flow_seed: Seed of the default flow's initial weights (fixed, so ``init`` is idempotent).
        dense_preconditioner: Precondition MALA (and standardise the default flow) with the
            walkers' covariance instead of their variances, as NUTS's ``dense_mass``. Helps
            strongly correlated unimodal posteriors; with separated modes the between-mode
            covariance makes it worse, hence off by default.
        fit_patience: Warm-up rounds without a 0.01 gain in smoothed global acceptance, once
            it is 0.1 or more, after which the flow and the preconditioner freeze until a new
            window; ``None``: fit for the whole warm-up.
        adapt_num_particles: Once fitting stops, draw only the i-SIR particles (eighths of
            ``num_particles``) that give most effective draws per potential evaluation.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import MCMC
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))
        >>> mcmc = MCMC(FlowMCKernel(model, num_particles=8), num_warmup=50, num_samples=50,
        ...             num_chains=16, chain_method="vectorized", progress_bar=False)
        >>> mcmc.run(jax.random.key(0))
        >>> mcmc.get_samples(group_by_chain=True)["x"].shape
        (16, 50, 2)
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        *,
        init_strategy: Callable = init_to_sample,
        flow: AbstractDistribution | None = None,
        flow_options: dict | None = None,
        fit_flow: bool = True,
        global_move: str = "isir",
        num_particles: int = 32,
        num_local_steps: int = 5,
        step_size: float = 0.1,
        target_accept_prob: float = DEFAULT_TARGET_ACCEPT_PROB,
        learning_rate: float = 1e-3,
        fit_every: int = 1,
        num_fit_steps: int = 10,
        fit_batch_size: int = 256,
        buffer_size: int = 50,
        particle_chunk_size: int | None = None,
        memory_budget_bytes: int = 2**28,
        flow_seed: int = 0,
        dense_preconditioner: bool = False,
        fit_patience: int | None = 50,
        adapt_num_particles: bool = False,
    ):
        check_kernel_arguments(model, potential_fn, init_strategy, flow, flow_options)
        self._model = model
        self._potential_fn = potential_fn
        self._init_strategy = init_strategy
        self._flow = flow
        self._flow_options = dict(flow_options or {})
        self._learning_rate = learning_rate
        self._optimizer = flow_optimizer(learning_rate)
        self._step_size = positive_float("step_size", step_size)
        num_particles = positive_int("num_particles", num_particles, minimum=2)
        self._chunk_options = dict(
            num_particles=num_particles,
            chunk_size=None
            if particle_chunk_size is None
            else positive_int("particle_chunk_size", particle_chunk_size),
            memory_budget_bytes=positive_int("memory_budget_bytes", memory_budget_bytes),
        )
        self._buffer_size = positive_int("buffer_size", buffer_size)
        self._flow_seed = seed_value("flow_seed", flow_seed)
        self._round_options = round_options(
            num_local_steps=num_local_steps,
            global_move=global_move,
            num_particles=num_particles,
            target_accept_prob=target_accept_prob,
            fit_flow=fit_flow,
            fit_every=fit_every,
            num_fit_steps=num_fit_steps,
            fit_batch_size=fit_batch_size,
            optimizer=self._optimizer,
            dense_preconditioner=dense_preconditioner,
            fit_patience=fit_patience,
            standardise_flow=flow is None,
            adapt_num_particles=adapt_num_particles,
        )
        # Set by `init` from the initial walkers; fixed for the run. `_latent_template` (one
        # walker's zeros) rebuilds `_unravel` after unpickling.
        self._config = self._flow_static = self._walker_sharding = self._sample_fn = None
        self._potential_fn_gen = self._postprocess_fn = None
        self._unravel = self._latent_template = self._key_impl = None  # raw keys: JAX's impl

    # -- NumPyro's MCMCKernel interface -----------------------------------------------------

    @property
    def model(self) -> Callable | None:
        """The NumPyro model, if the kernel was built from one."""
        return self._model

    @property
    def sample_field(self) -> str:
        """Name of the state field holding the draws."""
        return "z"

    @property
    def default_fields(self) -> tuple[str, ...]:
        """Fields collected by ``MCMC.run``; ArviZ shows them in ``sample_stats``."""
        return DEFAULT_FIELDS

    @property
    def global_move(self) -> str:
        """The global move: ``"isir"``, ``"imh"`` or ``"none"``."""
        return self._round_options["global_move"]

    @property
    def num_local_steps(self) -> int:
        """MALA steps per iteration (0: global moves only)."""
        return self._round_options["num_local_steps"]

    @property
    def is_ensemble_kernel(self) -> bool:
        """Walkers are updated together, so ``MCMC`` must use ``chain_method="vectorized"``."""
        return True

    def get_diagnostics_str(self, state: FlowMCState) -> str:
        """Progress-bar text: step size and mean local and global acceptance."""
        step, local, glob = (
            float(field[0])
            for field in (state.step_size, state.mean_accept_prob, state.mean_global_accept_prob)
        )
        return f"step {step:.2e}. local acc. {local:.2f}, global acc. {glob:.2f}"

    def postprocess_fn(self, args, kwargs) -> Callable:
        """Map one walker's unconstrained values to constrained ones."""
        if self._postprocess_fn is None:
            return identity
        return self._postprocess_fn(*args, **kwargs)

    def init(
        self,
        rng_key: jax.Array,
        num_warmup: int,
        init_params: Any = None,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
    ) -> FlowMCState:
        """Initialise the walkers, the flow and the adaptation state.

        Args:
            rng_key: One PRNG key per walker (``MCMC`` with ``chain_method="vectorized"``).
            num_warmup: Iterations of adaptation.
            init_params: Initial unconstrained values with the walker axis first.
            model_args: Arguments of the model.
            model_kwargs: Keyword arguments of the model.

        Returns:
            The initial state.
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        num_walkers = num_walkers_of(rng_key)
        key_state, key_model = jax.random.split(rng_key[0])
        self._key_impl = key_impl_name(rng_key)  # the state holds raw key data
        init_params, potential_fn_gen, postprocess_fn = initialize_walkers(
            jax.random.split(key_model, num_walkers),
            self._model,
            self._init_strategy,
            init_params,
            model_args,
            model_kwargs,
        )
        if self._model is not None:
            self._potential_fn_gen, self._postprocess_fn = potential_fn_gen, postprocess_fn
        self._latent_template = latent_template(init_params)
        flat_position, _ = batch_ravel_pytree(init_params)
        self._unravel = ravel_pytree(jax.tree.map(lambda leaf: leaf[0], init_params))[1]
        self._walker_sharding = walker_sharding(flat_position)
        dim = flat_position.shape[1]
        num_warmup = int(num_warmup)
        warn_if_untuned(num_warmup, self.num_local_steps, self._step_size)

        flow = self._flow
        if flow is None:
            flow = kernel_default_flow(self._flow_seed, dim, self._flow_options)
        flow_params, self._flow_static = split_flow(flow)
        self._config = round_config(  # flow-fitting batches split as the walkers are
            flat_position, self._round_options, self._chunk_options, self._walker_sharding,
            self._flat_potential(model_args, model_kwargs))  # fmt: skip
        self._sample_fn = flowmc_round

        # One program (run eagerly, each small op compiles); model args stay constants (NumPy).
        state, probe_energy = jax.jit(
            lambda arrays: self._initial_state(arrays, num_warmup, model_args, model_kwargs)
        )((flat_position, init_params, flow_params, key_state))
        check_potential_rises(probe_energy, from_potential_fn=self._model is None)
        warn_about_start(flat_position, state.potential_energy, self.global_move)
        return state

    def _initial_state(self, arrays, num_warmup, model_args, model_kwargs) -> tuple:
        flat_position, init_params, flow_params, key_state = arrays
        potential_fn = self._flat_potential(model_args, model_kwargs)
        adaptation = init_adaptation(
            flat_position,
            flow_params,
            self._optimizer.init(flow_params),
            step_size=self._step_size,
            buffer_size=self._buffer_size,
            dense_preconditioner=self._config.dense_preconditioner,
            num_particle_chunks=num_particle_chunks(self._config),
            num_warmup=num_warmup,
        )
        energy, probe_energy = energy_with_probes(potential_fn, flat_position)
        return initial_state(init_params, energy, adaptation, key_state), probe_energy

    def sample(self, state: FlowMCState, model_args: tuple, model_kwargs: dict) -> FlowMCState:
        """One iteration: a global flow move, local MALA moves, adaptation during warm-up.

        Args:
            state: Current state.
            model_args: Arguments of the model (may change between calls, e.g. EBM weights).
            model_kwargs: Keyword arguments of the model.

        Returns:
            The next state.
        """
        key_next, key_round = jax.random.split(typed_key(state.rng_key[0], self._key_impl))
        flat_position, unravel_batch = batch_ravel_pytree(state.z)
        num_warmup = state.adaptation.num_warmup
        adapting = state.adaptation.round_index < num_warmup
        position, adaptation, info = flowmc_round(
            key_round,
            flat_position,
            state.adaptation,
            self._flat_potential(model_args, model_kwargs or {}),
            self._flow_static,
            self._config,
            adapting,
        )
        if self._walker_sharding is not None:
            position = jax.lax.with_sharding_constraint(position, self._walker_sharding)
        warn_after_warmup(
            adaptation,
            info,
            at_end=state.adaptation.round_index + 1 == num_warmup,
            uses_flow=self.global_move != "none",
            uses_local_moves=self.num_local_steps > 0,
        )
        # Running means restart when sampling starts, so the bar shows the kept draws' rates.
        phase_start = jnp.where(adapting, 0, num_warmup)
        return next_state(state, unravel_batch(position), adaptation, info, phase_start, key_next)

    def refresh(self, state: FlowMCState, model_args: tuple, model_kwargs: dict) -> FlowMCState:
        """Recompute the potential at the current walkers after the model's arguments changed."""
        flat_position, _ = batch_ravel_pytree(state.z)
        potential_fn = self._flat_potential(model_args, model_kwargs or {})
        return state._replace(potential_energy=jax.vmap(potential_fn)(flat_position))

    def get_flow(self, state: FlowMCState) -> AbstractDistribution:
        """The flow held in ``state`` (e.g. ``mcmc.last_state``), to inspect or reuse.

        A fitted flow can be passed as ``flow=`` to a new kernel, with ``fit_flow=False`` to
        skip fitting it again.

        Args:
            state: A state of this kernel.

        Returns:
            The flowjax flow over the flat unconstrained space.
        """
        if self._flow_static is None:
            raise ValueError("The kernel has not been initialised: run `MCMC.run` first.")
        if not isinstance(state, FlowMCState):
            raise TypeError(
                "`state` must be a FlowMCState such as `mcmc.last_state` (or "
                "`mcmc.post_warmup_state` after `mcmc.warmup(...)`); got "
                f"{type(state).__name__}."
            )
        return proposal_flow(state.adaptation, self._flow_static, self._config)

    # -- Internals -----------------------------------------------------------------------------

    def _flat_potential(self, model_args, model_kwargs) -> Callable[[jax.Array], jax.Array]:
        potential_fn = (
            self._potential_fn_gen(*model_args, **model_kwargs)
            if self._model is not None
            else self._potential_fn
        )
        return flat_potential(potential_fn, self._unravel)

    def __getstate__(self) -> dict:
        # Flows are stored by recipe and arrays, closures rebuilt on loading; a `model` kernel
        # is initialised again by `MCMC` (see `numpyro_ebm._pickling`).
        return kernel_getstate(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(kernel_setstate(state, flow_optimizer))
