"""``FlowMCKernel``'s settings: validation of its arguments and what is derived from them.

Kept apart from the kernel so that the adapter reads as NumPyro's ``init``/``sample`` protocol.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flowjax.distributions import AbstractDistribution
from jax.sharding import NamedSharding, PartitionSpec

from numpyro_ebm._checks import flag, positive_int, python_scalar
from numpyro_ebm._warnings import warn_user
from numpyro_ebm.flows import check_flow_options, default_flow
from numpyro_ebm.samplers.flowmc import FlowMCConfig

__all__ = [
    "DEFAULT_TARGET_ACCEPT_PROB",
    "check_kernel_arguments",
    "chunk_size_for_budget",
    "default_flow_options",
    "flat_potential",
    "kernel_default_flow",
    "num_particle_chunks",
    "round_config",
    "round_options",
    "walker_sharding",
    "warn_if_untuned",
]

#: Target MALA acceptance: the optimal-scaling value of Roberts & Rosenthal (1998), as in [A].
DEFAULT_TARGET_ACCEPT_PROB = 0.574
#: Bytes of scratch per fresh i-SIR particle and coordinate: the proposal itself plus the
#: flow's and the potential's intermediates, estimated generously (8 arrays of the position's
#: size) so that ``memory_budget_bytes`` is an upper bound in practice.
_SCRATCH_ARRAYS_PER_PARTICLE = 8
#: Particle counts an adaptive kernel chooses among: the fresh particles come in this many
#: chunks (fewer chunks would give coarse choices, more a longer sequential loop per round).
_PARTICLE_COUNTS = 8

#: The default flow's transformer (see ``flow_options``).
_DEFAULT_TRANSFORMER = "affine"


#: Warm-up rounds of local moves only before the first global move, when the kernel fits its
#: own flow. Walkers start far from the modes (prior draws); global moves from a flow fitted on
#: their way in sent every walker of a 0.11-weight mode elsewhere in two rounds, and the flow,
#: fitted on the walkers, never proposed it again (d = 6, 4 modes, 3 seeds of 5). Three rounds
#: kept it in those seeds; ten leave a margin at a cost of ten rounds' global moves.
SETTLE_ROUNDS = 10


def round_options(
    *,
    num_local_steps: Any,
    global_move: Any,
    num_particles: int,
    target_accept_prob: Any,
    fit_flow: Any,
    fit_every: Any,
    num_fit_steps: Any,
    fit_batch_size: Any,
    optimizer: Any,
    dense_preconditioner: Any,
    fit_patience: Any,
    standardise_flow: bool,
    adapt_num_particles: Any = False,
) -> dict:
    """The keyword arguments of :class:`~numpyro_ebm.samplers.FlowMCConfig` but the chunk size.

    Raises:
        ValueError: Naming the argument, what was expected and what was given.
    """
    if global_move not in ("isir", "imh", "none"):
        raise ValueError(f"`global_move` must be 'isir', 'imh' or 'none', got {global_move!r}.")
    if global_move == "none" and num_local_steps == 0:
        raise ValueError(
            "The walkers would never move: expected a global move or at least one local step; "
            "got global_move='none' and num_local_steps=0."
        )
    probability = python_scalar(target_accept_prob)
    if not (isinstance(probability, numbers.Real) and not isinstance(probability, bool)) or not (
        0 < probability < 1
    ):
        raise ValueError(f"`target_accept_prob` must be in (0, 1), got {target_accept_prob!r}.")
    return dict(
        num_local_steps=positive_int("num_local_steps", num_local_steps, minimum=0),
        global_move=global_move,
        num_particles=num_particles,
        target_accept_prob=float(probability),
        fit_flow=flag("fit_flow", fit_flow),
        fit_every=positive_int("fit_every", fit_every),
        num_fit_steps=positive_int("num_fit_steps", num_fit_steps),
        fit_batch_size=positive_int("fit_batch_size", fit_batch_size),
        optimizer=optimizer,
        dense_preconditioner=flag("dense_preconditioner", dense_preconditioner),
        fit_patience=None if fit_patience is None else positive_int("fit_patience", fit_patience),
        standardise_flow=standardise_flow,
        adapt_num_particles=flag("adapt_num_particles", adapt_num_particles)
        and global_move == "isir",
        settle_rounds=SETTLE_ROUNDS if standardise_flow and num_local_steps > 0 else 0,
    )


def check_kernel_arguments(
    model: Any, potential_fn: Any, init_strategy: Any, flow: Any, flow_options: dict | None
) -> None:
    """Raise unless the kernel's target, initialisation and flow arguments fit together.

    Names and values are checked when the kernel is built, not when ``MCMC.run`` first builds
    the flow (``loc`` and ``scale`` of ``flow_options`` excepted, which need the dimension).

    Example:
        >>> check_kernel_arguments(lambda: None, None, print, None, {"nn_widht": 64})
        Traceback (most recent call last):
        ...
        TypeError: `flow_options` are keyword arguments of default_flow: expected some of ...
    """
    if (model is None) == (potential_fn is None):
        given = "both" if model is not None else "neither"
        raise ValueError(f"Pass exactly one of `model` and `potential_fn`; got {given}.")
    for name, target in (("model", model), ("potential_fn", potential_fn)):
        if target is not None and not callable(target):
            raise TypeError(
                f"`{name}` must be callable (a NumPyro model, or a potential of the "
                f"unconstrained values); got {type(target).__name__}."
            )
    if flow_options is not None and not isinstance(flow_options, Mapping):
        raise TypeError(
            f"`flow_options` must be a dict of default_flow's options; got "
            f"{type(flow_options).__name__}."
        )
    if not callable(init_strategy):
        raise TypeError(
            "`init_strategy` must be one of NumPyro's initialisation strategies (e.g. "
            f"`init_to_sample`, `init_to_median()`); got {init_strategy!r}."
        )
    if flow is not None and not isinstance(flow, AbstractDistribution):
        raise TypeError(f"`flow` must be a flowjax distribution, got {type(flow).__name__}.")
    if flow is not None and flow_options:
        raise ValueError("`flow_options` configure the default flow; got a `flow` as well.")
    accepted = [
        name
        for name, parameter in inspect.signature(default_flow).parameters.items()
        if parameter.kind == inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(flow_options or {}) - set(accepted))
    if unknown:
        raise TypeError(
            "`flow_options` are keyword arguments of default_flow: expected some of "
            f"{accepted}; got {unknown}."
        )
    check_flow_options(**(flow_options or {}))


def default_flow_options(user_options: dict) -> dict:
    """Options of the default flow: affine coupling unless the user's options say otherwise.

    In the preconditioned coordinates, with i-SIR's particles, affine coupling got the mode
    weights as well as splines did on every target measured (``benchmarks/bimodal.py`` in
    d = 2, 16 and 64; eight unequal modes on a ring and notebook 01's posterior in d = 2) at
    a fraction of the cost: a spline flow more than doubled the wall time of the kid-IQ
    regression in ``benchmarks/posteriors.py``.

    Example:
        >>> default_flow_options({})
        {'transformer': 'affine'}
        >>> default_flow_options({"transformer": "spline", "knots": 4})
        {'transformer': 'spline', 'knots': 4}
    """
    return {"transformer": _DEFAULT_TRANSFORMER, **user_options}


def kernel_default_flow(flow_seed: int, dim: int, user_options: dict) -> AbstractDistribution:
    """The kernel's default flow: :func:`~numpyro_ebm.flows.default_flow` with these options.

    It lives in the preconditioned coordinates, where the walkers are standardised, and starts
    near the identity there (see :mod:`numpyro_ebm.samplers.adaptation`).
    """
    return default_flow(jax.random.key(flow_seed), dim, **default_flow_options(user_options))


def _size_text(num_bytes: int) -> str:
    """``num_bytes`` in B, KiB, MiB or GiB, three significant digits.

    Example:
        >>> _size_text(1), _size_text(500), _size_text(3 * 2**19), _size_text(2**30)
        ('1 B', '500 B', '1.5 MiB', '1 GiB')
    """
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= size:
            return f"{num_bytes / size:.3g} {unit}"
    return f"{num_bytes} B"


def chunk_size_for_budget(
    num_walkers: int,
    dim: int,
    dtype: Any,
    *,
    num_particles: int,
    chunk_size: int | None,
    memory_budget_bytes: int,
    adaptive: bool = False,
    potential_bytes: int = 0,
) -> int:
    """i-SIR particles per walker drawn at once: as given, or the most the budget allows.

    A particle costs ``_SCRATCH_ARRAYS_PER_PARTICLE`` arrays of ``dim`` numbers per walker,
    plus ``potential_bytes``, the scratch of one potential evaluation (a model's data plate:
    N = 10⁵ points take 1.2 MB each, and 31 particles of 128 walkers then took 9 GB). With
    ``adaptive`` (the kernel adapts how many chunks it draws) the particles come in at most
    ``_PARTICLE_COUNTS`` chunks, the counts the kernel chooses from.

    Example:
        >>> chunk_size_for_budget(1000, 100, "float32", num_particles=32, chunk_size=None,
        ...                     memory_budget_bytes=2**22)
        1
        >>> chunk_size_for_budget(128, 2, "float32", num_particles=32, chunk_size=None,
        ...                     memory_budget_bytes=2**28, adaptive=True)
        4
    """
    if chunk_size is not None:
        return min(chunk_size, num_particles - 1)
    needed = num_walkers * (
        dim * jnp.dtype(dtype).itemsize * _SCRATCH_ARRAYS_PER_PARTICLE + potential_bytes
    )
    fitting = memory_budget_bytes // needed
    if fitting < 1:
        own = num_walkers * potential_bytes
        model = f" ({_size_text(own)} of it the potential's own)" if potential_bytes else ""
        warn_user(
            f"one i-SIR particle per walker needs about {_size_text(needed)} of scratch "
            f"for {num_walkers} walkers in d = {dim}{model}, more than memory_budget_bytes "
            f"({_size_text(memory_budget_bytes)}): drawing one at a time, over budget. "
            "Fewer walkers per device, or a larger budget if the device has the memory."
        )
    if adaptive:
        fitting = min(fitting, -(-(num_particles - 1) // _PARTICLE_COUNTS))
    return int(max(1, min(num_particles - 1, fitting)))


def num_particle_chunks(config: FlowMCConfig) -> int:
    """Chunks of ``config.chunk_size`` that hold the ``num_particles - 1`` fresh particles."""
    return -(-(config.num_particles - 1) // config.chunk_size)


def potential_scratch_bytes(potential_fn: Callable, dim: int, dtype: Any) -> int:
    """XLA's scratch for one evaluation of ``potential_fn`` (vmapped, as the rounds call it).

    One small compilation; 0 where the backend gives no memory analysis.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> data = jnp.linspace(-3.0, 3.0, 10_000)  # a mixture's two terms at every point
        >>> def potential(z):
        ...     terms = jnp.stack([-((data - z[0]) ** 2), -((data + z[0]) ** 2)])
        ...     return -jnp.sum(jax.nn.logsumexp(terms, axis=0))
        >>> potential_scratch_bytes(potential, 1, "float32") >= 2 * 10_000 * 4
        True
    """
    points = 8
    shape = jax.ShapeDtypeStruct((points, dim), dtype)
    analysis = jax.jit(jax.vmap(potential_fn)).lower(shape).compile().memory_analysis()
    return 0 if analysis is None else int(analysis.temp_size_in_bytes) // points


def round_config(
    flat_position: jax.Array,
    options: dict,
    chunk_options: dict,
    batch_sharding: NamedSharding | None = None,
    potential_fn: Callable | None = None,
) -> FlowMCConfig:
    """The round's configuration for these walkers: ``options`` and a chunk size that fits.

    Args:
        flat_position: The walkers, ``(num_walkers, dim)``.
        options: From :func:`round_options`.
        chunk_options: ``num_particles``, ``chunk_size`` and ``memory_budget_bytes`` of
            :func:`chunk_size_for_budget`.
        batch_sharding: How each flow-fitting batch is split over devices (the walkers').
        potential_fn: ``U`` of one flat position, whose own scratch the budget then counts
            (where no chunk size is given).
    """
    num_walkers, dim = flat_position.shape
    potential_bytes = 0
    if potential_fn is not None and chunk_options.get("chunk_size") is None:
        potential_bytes = potential_scratch_bytes(potential_fn, dim, flat_position.dtype)
    chunk_size = chunk_size_for_budget(
        num_walkers,
        dim,
        flat_position.dtype,
        **chunk_options,
        adaptive=options["adapt_num_particles"],
        potential_bytes=potential_bytes,
    )
    return FlowMCConfig(chunk_size=chunk_size, batch_sharding=batch_sharding, **options)


def walker_sharding(flat_position: jax.Array) -> NamedSharding | None:
    """The sharding that keeps walkers split over devices, if they were given split."""
    sharding = getattr(flat_position, "sharding", None)
    if not isinstance(sharding, NamedSharding) or len(sharding.device_set) < 2:
        return None
    walker_axis = sharding.spec[0] if len(sharding.spec) else None
    if walker_axis is None:
        return None
    return NamedSharding(sharding.mesh, PartitionSpec(walker_axis))


def flat_potential(
    potential_fn: Callable[[Any], jax.Array], unravel: Callable[[jax.Array], Any]
) -> Callable[[jax.Array], jax.Array]:
    """The potential of one flat position, checked to be a scalar in the walkers' dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> flat_potential(lambda x: jnp.sum(x**2, keepdims=True), lambda x: x)(jnp.ones(2))
        Traceback (most recent call last):
        ...
        ValueError: expected a scalar potential per walker, got shape (1,) (reduce it, e.g. ...)
    """

    def potential(flat: jax.Array) -> jax.Array:
        energy = jnp.asarray(potential_fn(unravel(flat)))
        if energy.shape != ():  # shapes are known when traced: this fails before any work
            raise ValueError(
                f"expected a scalar potential per walker, got shape {energy.shape} (reduce it, "
                "e.g. with jnp.sum)"
            )
        return energy.astype(flat.dtype)  # the walkers' precision, whatever it returns

    return potential


def warn_if_untuned(num_warmup: int, num_local_steps: int, step_size: float) -> None:
    """Warn that MALA's step size and preconditioner stay untuned without warm-up."""
    if num_warmup == 0 and num_local_steps > 0:
        warn_user(
            f"FlowMCKernel without warm-up: MALA keeps its initial step size ({step_size}) and "
            "the initial walkers' preconditioner, untuned. Warm up (num_warmup > 0), or "
            "continue a warmed-up run from its state (mcmc.post_warmup_state = "
            "mcmc.last_state).",
            UserWarning,
        )
