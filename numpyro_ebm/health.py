"""Checks that a flow-assisted run went well, as NUTS users read divergences and R̂.

Six things go wrong silently with a flow-assisted sampler, and each has a remedy:

- **the flow proposes nothing useful** (mean global acceptance near 0): the flow has not
  learned the target, so modes are not exchanging walkers;
- **the MALA step size collapsed**: local moves are frozen (a rough or badly scaled potential);
- **the walkers have not mixed**: the rank-normalised split R̂ (Vehtari et al. 2021) with
  groups of 16 walkers as chains exceeds 1.01 (more with fewer walkers, see
  :func:`rhat_threshold`), so walkers still remember where they started;
- **walkers are stranded where the flow has no mass**: more than 1 % of them have an
  importance weight ``e^10`` above every proposal's (see
  :func:`~numpyro_ebm.samplers.global_moves.stranded_walkers`). Global moves can neither move
  them nor bring others there, so that region's weight rests on local moves alone: a thin
  ridge whose ends the flow never learned lost a quarter of E[x1²] this way, at a global
  acceptance of 0.85 and R̂ 1.00;
- **local moves stall in part of the target**: more than 5 % of the walkers' iterations
  accept under 1 % of their MALA proposals. Some region is much narrower than the step size,
  as the neck of a funnel is (a centred hierarchical model, where NUTS reports divergences);
  only the flow moves walkers there, and it learns that region from too few of them. A
  centred hierarchy of 30 groups put 0.13 of its mass at τ < 0.1 instead of 0.19, at a global
  acceptance of 0.89, R̂ 1.00 and 0.1 % stranded walkers; 10 % of its iterations stalled,
  against at most 1.8 % on the well-posed posteriors measured;
- **a site of interval support piles at both of its ends** (:func:`check_run` only): each
  outer tenth of the interval holds more than 15 % of the draws. NumPyro samples the site's
  logit, where the two ends are two far-apart tails; a phase ``Uniform(0, 2π)`` whose
  posterior straddles 0 = 2π is the common case (see :func:`interval_ends_problems`).

:class:`~numpyro_ebm.FlowMCKernel` runs :func:`find_problems` on its last warm-up window when
warm-up ends and warns once; :func:`check_run` runs the same checks on a finished ``MCMC``'s
kept draws, for notebooks and tests.

References:
    A. Vehtari, A. Gelman, D. Simpson, B. Carpenter, P.-C. Bürkner, *Rank-normalization,
    folding, and localization: an improved R̂*, Bayesian Analysis 16 (2021).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints

from numpyro_ebm._health_rules import (
    MAX_RHAT,
    MAX_STALLED_FRACTION,
    MAX_STRANDED_FRACTION,
    MIN_GLOBAL_ACCEPT_PROB,
    MIN_STALLED_WALKERS,
    MIN_STEP_SIZE,
    STALLED_ACCEPT_PROB,
    WALKERS_PER_GROUP,
    ensemble_rhat,
    find_problems,
    interval_ends_problems,
    rhat_threshold,
    stalled_fraction,
)
from numpyro_ebm._warnings import warn_user

__all__ = [
    "MAX_RHAT",
    "MAX_STALLED_FRACTION",
    "MAX_STRANDED_FRACTION",
    "MIN_GLOBAL_ACCEPT_PROB",
    "MIN_STALLED_WALKERS",
    "MIN_STEP_SIZE",
    "STALLED_ACCEPT_PROB",
    "WALKERS_PER_GROUP",
    "RunHealth",
    "check_run",
    "find_problems",
    "ensemble_rhat",
    "interval_ends_problems",
    "rhat_threshold",
    "stalled_fraction",
    "warn_after_warmup",
    "warn_problems",
]


class RunHealth(NamedTuple):
    """What :func:`check_run` measured, and the problems it found.

    Attributes:
        global_accept_prob: Mean acceptance of the global moves (NaN without them).
        step_size: MALA step size of the kept draws (in standardised coordinates).
        max_rhat: Largest R̂ over the latent sites' coordinates, groups of walkers as
            chains (NaN if too few draws, or if every coordinate is constant).
        stranded_fraction: Fraction of the walkers' draws that were stranded where the flow
            has almost no mass (0 without global moves).
        stalled_fraction: Fraction of the walkers' draws whose MALA steps accepted less than
            :data:`STALLED_ACCEPT_PROB` on average (0 without local moves).
        nonfinite_fraction: Fraction of the walkers' draws whose potential is not finite
            (NaN or inf): walkers that never left a region where the model is undefined.
        walker_rhat: The same R̂ with each walker its own chain. Not a problem by itself (an
            ensemble can be right while each walker moves slowly), but well above 1.01 the
            walkers rarely cross between regions, so the regions' weights rest on where
            warm-up left them: compare runs from other seeds. It does not tell right from
            wrong on the aliased sinusoid of ``benchmarks/aliased_sinusoid.py``: 1.006-1.094
            on runs 0.02-0.24 off, 1.001-1.171 on runs within 0.01; 1.001 and 1.008 for the
            2:1 two-mode target at d = 2 and 16.
        problems: One message per problem, each naming its cause and a remedy; empty when the
            run looks healthy.
    """

    global_accept_prob: float
    step_size: float
    max_rhat: float
    stranded_fraction: float
    stalled_fraction: float
    nonfinite_fraction: float
    walker_rhat: float
    problems: tuple[str, ...]


def warn_problems(problems: tuple[str, ...], when: str) -> None:
    """Emit one ``UserWarning`` listing ``problems`` (nothing if there are none).

    Args:
        problems: Messages from :func:`find_problems`.
        when: Where they were found, e.g. ``"after warm-up"``.
    """
    if problems:
        message = f"FlowMCKernel {when}: " + " ".join(problems)
        warn_user(message)


def warn_after_warmup(
    adaptation: Any,
    info: Any,
    *,
    at_end: Any,
    uses_flow: bool,
    uses_local_moves: bool,
) -> None:
    """From traced code: at the end of warm-up, run :func:`find_problems` on the host.

    The walkers' positions over the last window (at most the buffer's length) give R̂ with
    groups of walkers as chains; the step size is the averaged one sampling will use.

    Args:
        adaptation: The :class:`~numpyro_ebm.samplers.FlowMCAdaptation` after a round.
        info: That round's :class:`~numpyro_ebm.samplers.FlowMCRoundInfo` (global and local
            acceptance and stranded walkers, per walker).
        at_end: Boolean scalar: the round was the last of warm-up (nothing happens otherwise).
        uses_flow: Whether the kernel makes global moves.
        uses_local_moves: Whether it makes MALA moves.
    """
    buffer_size = adaptation.buffer.shape[0]
    num_rows = jnp.minimum(adaptation.round_index - adaptation.window_start, buffer_size)
    # Buffer rows in the order they were written, oldest first.
    rows = (adaptation.round_index - buffer_size + jnp.arange(buffer_size)) % buffer_size

    def on_host(history, num_rows, global_accept_prob, step_size, stranded, accept, num_flat):
        history = np.asarray(history)[len(history) - int(num_rows) :]
        max_rhat = ensemble_rhat(np.swapaxes(history, 0, 1))
        stalled = stalled_fraction(accept) if uses_local_moves else 0.0
        if stalled * len(accept) < MIN_STALLED_WALKERS:
            stalled = 0.0
        problems = find_problems(
            float(global_accept_prob),
            float(step_size),
            max_rhat,
            uses_flow=uses_flow,
            stranded_fraction=float(stranded),
            max_rhat_allowed=rhat_threshold(history.shape[1]),
            stalled_fraction=stalled,
            num_flat=int(num_flat),
        )
        warn_problems(problems, "after warm-up")

    def check():
        jax.debug.callback(
            on_host,
            adaptation.buffer[rows],
            num_rows,
            jnp.mean(info.global_accept_prob),
            adaptation.step_size_average,
            jnp.mean(info.stranded),
            info.accept_prob,
            jnp.sum(adaptation.flat),
        )

    jax.lax.cond(at_end, check, lambda: None)


def _latent_draws(samples: Any, latent: Any) -> np.ndarray:
    """Draws ``(walkers, draws, dim)`` of the latent sites: deterministic ones add only cost."""
    if isinstance(samples, dict) and isinstance(latent, dict):
        samples = {name: value for name, value in samples.items() if name in latent}
    leaves = jax.tree.leaves(samples)
    return np.concatenate([np.reshape(leaf, (*leaf.shape[:2], -1)) for leaf in leaves], -1)


def _fixed_intervals(mcmc: Any, samples: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (lower, upper)}`` of the model's latent sites with a fixed interval support.

    The model is traced twice with the run's arguments, at two kept draws (substituted, so that
    improper sites need no sampling): bounds that differ between the traces depend on other
    latent values (``Uniform(0, θ)``) and are left out, as are circular supports (NumPyro
    samples those unconstrained). Empty for a ``potential_fn``.

    Args:
        mcmc: The finished run.
        samples: Its draws grouped by walker, ``{name: (walkers, draws, ...)}``.
    """
    model = mcmc.sampler.model
    if model is None:
        return {}
    args, kwargs = getattr(mcmc, "_args", ()), getattr(mcmc, "_kwargs", {})
    last = {name: value.shape[0] - 1 for name, value in samples.items()}
    traces = [
        handlers.trace(
            handlers.substitute(
                handlers.seed(model, 0),
                {name: value[i * last[name], -i] for name, value in samples.items()},
            )
        ).get_trace(*args, **kwargs)
        for i in (0, 1)
    ]
    intervals = {}
    for name, site in traces[0].items():
        other = traces[1].get(name, {})
        if site["type"] != "sample" or site["is_observed"] or "fn" not in other:
            continue
        support, other_support = site["fn"].support, other["fn"].support
        if not isinstance(support, constraints._Interval) or isinstance(
            support, constraints._Circular
        ):
            continue
        bounds = [np.asarray(c) for c in (support.lower_bound, support.upper_bound)]
        others = [np.asarray(c) for c in (other_support.lower_bound, other_support.upper_bound)]
        if all(np.array_equal(a, b) for a, b in zip(bounds, others, strict=True)):
            intervals[name] = tuple(bounds)
    return intervals


def check_run(mcmc: Any) -> RunHealth:
    """Check a finished ``MCMC(FlowMCKernel(...))`` run on its kept draws.

    Args:
        mcmc: A ``numpyro.infer.MCMC`` whose sampler is a :class:`~numpyro_ebm.FlowMCKernel`,
            after ``run``.

    Returns:
        The measured global acceptance, step size, R̂, stranded, stalled and non-finite
        fractions, each walker's R̂, and the problems found; for a model, these include its
        sites of interval support whose draws pile at both ends (see
        :func:`interval_ends_problems`).

    Raises:
        TypeError: If the sampler is not a ``FlowMCKernel`` or ``run`` has not been called.
        ValueError: If the MCMC has only warmed up (``mcmc.warmup``).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import MCMC
        >>> from numpyro_ebm import FlowMCKernel
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))
        >>> mcmc = MCMC(FlowMCKernel(model, num_particles=8), num_warmup=100,
        ...             num_samples=100, num_chains=16, chain_method="vectorized",
        ...             progress_bar=False)
        >>> mcmc.run(jax.random.PRNGKey(0))
        >>> check_run(mcmc).problems
        ()
    """
    from numpyro_ebm.kernel import FlowMCKernel  # the kernel imports this module

    state = getattr(mcmc, "last_state", None)
    sampler = getattr(mcmc, "sampler", None)
    if sampler is None:
        raise TypeError(f"`check_run` takes an MCMC of a FlowMCKernel, got {type(mcmc).__name__}.")
    if not isinstance(sampler, FlowMCKernel) or state is None:
        raise TypeError(
            "`check_run` takes an MCMC of a FlowMCKernel after `run`; got an MCMC of "
            f"{type(sampler).__name__}" + (" that has not run." if state is None else ".")
        )
    if int(np.asarray(state.i)[0]) <= mcmc.num_warmup:  # NumPyro then returns zeros as draws
        raise ValueError(
            "`check_run` checks the draws kept after warm-up: expected an MCMC that has kept "
            "some; got one that has only warmed up (call `mcmc.run`)."
        )
    samples = mcmc.get_samples(group_by_chain=True)
    draws = _latent_draws(samples, state.z)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    global_accept_prob = float(np.mean(extra["global_accept_prob"]))
    step_size = float(np.asarray(state.step_size)[0])
    max_rhat = ensemble_rhat(draws)
    stranded_fraction = float(np.mean(extra["stranded"]))
    uses_local_moves = mcmc.sampler.num_local_steps > 0
    stalled = stalled_fraction(extra["accept_prob"]) if uses_local_moves else 0.0
    nonfinite = float(np.mean(~np.isfinite(np.asarray(extra["potential_energy"]))))
    problems = find_problems(
        global_accept_prob,
        step_size,
        max_rhat,
        uses_flow=mcmc.sampler.global_move != "none",
        stranded_fraction=stranded_fraction,
        max_rhat_allowed=rhat_threshold(draws.shape[0]),
        stalled_fraction=stalled,
        nonfinite_fraction=nonfinite,
        num_flat=int(np.sum(np.asarray(state.adaptation.flat))),
        num_held_stranded=int(np.sum(np.mean(extra["stranded"], axis=1) > 0.5)),
    )
    intervals = _fixed_intervals(mcmc, samples)
    problems += interval_ends_problems(
        {name: (samples[name], *intervals[name]) for name in intervals if name in samples}
    )
    measured = (global_accept_prob, step_size, max_rhat, stranded_fraction, stalled, nonfinite)
    return RunHealth(*measured, ensemble_rhat(draws, group_size=1), problems)
