"""Checks that a flow-assisted run went well, as NUTS users read divergences and R̂.

Five things go wrong silently with a flow-assisted sampler, and each has a remedy:

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
  against at most 1.8 % on the well-posed posteriors measured.

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

from numpyro_ebm._warnings import warn_user
from numpyro_ebm.metrics import mixing_diagnostics

__all__ = [
    "RunHealth",
    "check_run",
    "find_problems",
    "ensemble_rhat",
    "rhat_threshold",
    "stalled_fraction",
    "warn_after_warmup",
    "warn_problems",
]

#: Below this mean global acceptance the flow counts as useless: fewer than one walker in a
#: hundred moves globally per iteration.
MIN_GLOBAL_ACCEPT_PROB = 0.01
#: Below this the MALA step size (in coordinates standardised by the walkers' spread) has
#: collapsed: a walker moves ~5e-4 standard deviations per step, 2000 steps to cross one. Not
#: higher: with well-separated narrow modes the walkers' spread is the modes' separation, and
#: a healthy step in those coordinates is (width / separation)², 1e-4 for modes 100 widths
#: apart.
MIN_STEP_SIZE = 1e-7
#: Vehtari et al. (2021)'s threshold for R̂.
MAX_RHAT = 1.01
#: Walkers per chain of the ensemble R̂ (see :func:`ensemble_rhat`): 16 keeps a healthy
#: 50-round window well under 1.01 and puts walkers stuck between two modes near 1.03.
WALKERS_PER_GROUP = 16
#: Above this fraction of stranded walkers (walker-draws for :func:`check_run`), the flow misses
#: part of the target. Healthy runs measured at most 0.3 % (a funnel's neck, a Student-t's
#: tails, 128 walkers); the thin ridge whose ends the flow missed had 2.4 %.
MAX_STRANDED_FRACTION = 0.01
#: A walker's iteration stalls when its MALA steps accept less than this on average.
STALLED_ACCEPT_PROB = 0.01
#: Above this fraction of stalled iterations (walker-draws for :func:`check_run`, the last
#: round's walkers at the end of warm-up) a region defeats the local moves. Measured, 128
#: walkers, 1000 + 1000 rounds: at most 1.8 % on the well-posed posteriors (the posteriors
#: suite but its funnel, a non-centred hierarchy of 30 groups, Gaussians, a Student-t); 10 %
#: and 18 % on centred hierarchies of 30 and 8 groups (sampled wrong), 28 % on Neal's funnel
#: in d = 5 and 6-8 % on a thin curved ridge (both sampled right, as NUTS's divergences flag
#: funnels it gets right).
MAX_STALLED_FRACTION = 0.05
#: At the end of warm-up, fewer stalled walkers than this are not reported: one walker of 8
#: is 12.5 %, and healthy runs stall a walker now and then.
MIN_STALLED_WALKERS = 3
#: Fewest draws per walker for an R̂ (split R̂ halves each chain).
_MIN_DRAWS = 8


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
        problems: One message per problem, each naming its cause and a remedy; empty when the
            run looks healthy.
    """

    global_accept_prob: float
    step_size: float
    max_rhat: float
    stranded_fraction: float
    stalled_fraction: float
    problems: tuple[str, ...]


def _walkers_per_chain(num_walkers: int, group_size: int = WALKERS_PER_GROUP) -> int:
    """Walkers per chain of :func:`ensemble_rhat`: ``group_size``, fewer to make two chains."""
    return max(1, min(group_size, num_walkers // 2))


def ensemble_rhat(draws: Any, group_size: int = WALKERS_PER_GROUP) -> float:
    """Largest rank-normalised split R̂ over coordinates, with groups of walkers as chains.

    Walkers ``0 .. m-1`` form the first chain, ``m .. 2m-1`` the second, and so on; a chain's
    draws are its walkers' positions in time order, so the split halves compare the first and
    the second half of the run. Walkers stuck where they started keep their group's
    composition fixed, so the groups disagree (R̂² − 1 ≈ 1/m between two modes) however long
    the run; mixing walkers make the groups agree to within ``τ / (T m)`` for ``T`` draws of
    autocorrelation time ``τ``. One walker per chain would make that noise ``τ / T``, which
    passes 1.01 in a 50-round warm-up window of a healthy multimodal run.

    Args:
        draws: Shape ``(num_walkers, num_draws, dim)``.
        group_size: Walkers per chain ``m``; fewer when there are under two full groups.

    Returns:
        The largest R̂, or NaN with fewer than 8 draws per walker, fewer than 2 walkers or
        non-finite draws.

    Example:
        >>> import numpy as np
        >>> stuck = np.repeat(np.random.default_rng(0).choice([-5.0, 5.0], 128)[:, None], 50, 1)
        >>> noise = np.random.default_rng(1).normal(size=(128, 50))
        >>> ensemble_rhat((stuck + noise)[..., None]) > 1.01
        True
        >>> ensemble_rhat(np.random.default_rng(2).normal(size=(128, 50, 1))) < 1.01
        True
    """
    draws = np.asarray(draws, np.float64)
    num_walkers, num_draws, dim = draws.shape
    if num_draws < _MIN_DRAWS or num_walkers < 2 or not np.all(np.isfinite(draws)):
        return float("nan")
    group_size = _walkers_per_chain(num_walkers, group_size)
    num_groups = num_walkers // group_size
    grouped = draws[: num_groups * group_size].reshape(num_groups, group_size, num_draws, dim)
    chains = grouped.transpose(0, 2, 1, 3).reshape(num_groups, num_draws * group_size, dim)
    return mixing_diagnostics(chains)["max_rhat"]


def rhat_threshold(num_walkers: int) -> float:
    """The R̂ above which :func:`ensemble_rhat` of ``num_walkers`` walkers reports a problem.

    Vehtari et al.'s 1.01 for groups of 16 walkers. A group of ``m < 16`` (fewer than 32
    walkers) makes both the healthy noise of R̂² − 1 and the signal of walkers stuck between
    two modes (≈ 1/m) grow as 1/m, so the threshold's excess over 1 grows by 16/m: the check
    keeps the false-alarm rate and the power it has with 16. With 8 walkers and 1.01, a
    healthy 2-D Gaussian's end-of-warm-up check fired in 2 runs of 10.

    Example:
        >>> rhat_threshold(128), rhat_threshold(8)
        (1.01, 1.04)
    """
    group_size = _walkers_per_chain(num_walkers)
    return round(1.0 + (MAX_RHAT - 1.0) * WALKERS_PER_GROUP / group_size, 6)


def find_problems(
    global_accept_prob: float,
    step_size: float,
    max_rhat: float,
    *,
    uses_flow: bool = True,
    stranded_fraction: float = 0.0,
    max_rhat_allowed: float = MAX_RHAT,
    stalled_fraction: float = 0.0,
) -> tuple[str, ...]:
    """Messages for the checks that fail; each names the cause and a remedy.

    Args:
        global_accept_prob: Mean global acceptance.
        step_size: MALA step size (standardised coordinates); NaN skips the check.
        max_rhat: Largest ensemble R̂ (see :func:`ensemble_rhat`); NaN skips the check.
        uses_flow: Whether the run made global moves.
        stranded_fraction: Fraction of stranded walkers (or walker-draws).
        max_rhat_allowed: The R̂ threshold (:func:`rhat_threshold` of the walker count).
        stalled_fraction: Fraction of walkers (or walker-draws) whose local moves stalled.

    Returns:
        The messages, empty if every check passes.

    Example:
        >>> find_problems(0.5, 0.3, 1.002)
        ()
        >>> print(find_problems(0.0, 0.3, 1.002)[0])  # doctest: +ELLIPSIS
        mean global acceptance 0.000 < 0.01: the flow proposes ...
    """
    problems = []
    if uses_flow and not global_accept_prob >= MIN_GLOBAL_ACCEPT_PROB:
        problems.append(
            f"mean global acceptance {global_accept_prob:.3f} < {MIN_GLOBAL_ACCEPT_PROB}: the "
            "flow proposes almost nothing the target accepts, so walkers do not move between "
            "modes. Use a longer warm-up (num_warmup), more walkers (num_chains) spread over "
            "the modes, or a larger flow (flow_options)."
        )
    if step_size < MIN_STEP_SIZE:
        problems.append(
            f"MALA step size {step_size:.2e} < {MIN_STEP_SIZE:g} (standardised coordinates): "
            "local moves are frozen. The potential may be rough, discontinuous or have wrong "
            "gradients, or, with dense_preconditioner=True, flat in some coordinate (an "
            "improper posterior, such as the observed entries of an `obs_mask` site), where "
            "the walkers drift until it overflows; check the model, or reparameterise it."
        )
    if max_rhat > max_rhat_allowed:
        problems.append(
            f"walkers have not mixed: R̂ across walker groups {max_rhat:.3f} > "
            f"{max_rhat_allowed:g}. Run a "
            "longer warm-up and more draws, or check the global acceptance."
        )
    if uses_flow and stranded_fraction > MAX_STRANDED_FRACTION:
        problems.append(
            f"{stranded_fraction:.1%} of walkers are stranded where the flow has almost no "
            f"mass (> {MAX_STRANDED_FRACTION:.0%}; their importance weight exceeds every "
            "proposal's by e^10): global moves can neither move them nor bring others there, "
            "so that region's weight rests on the local moves alone and may be wrong. Run a "
            "longer warm-up (fitting goes on while walkers are stranded), a larger flow "
            "(flow_options), or compare runs from other seeds or with fit_flow=False. Targets "
            "with heavier tails than the flow's show this too."
        )
    if stalled_fraction > MAX_STALLED_FRACTION:
        problems.append(
            f"local moves stalled in {stalled_fraction:.1%} of the walkers' iterations "
            f"(MALA acceptance < {STALLED_ACCEPT_PROB:.0%}; > {MAX_STALLED_FRACTION:.0%}): part "
            "of the posterior is much narrower than the step size. Most often it is the neck "
            "of a funnel (a centred hierarchical model, where NUTS reports divergences): only "
            "the flow moves walkers there, and it may underweight that region; reparameterise "
            "the model (numpyro.handlers.reparam with numpyro.infer.reparam.LocScaleReparam(0) "
            "on the group-level sites). Two other causes: a hard edge of the support that "
            "depends on the parameters (a Uniform(0, θ) likelihood; many proposals are then "
            "outside it, see num_nonfinite), where the draws can still be right; or a step size "
            "not adapted (num_warmup=0 or too short). Compare runs from other seeds."
        )
    return tuple(problems)


def stalled_fraction(accept_prob: Any) -> float:
    """Fraction of ``accept_prob`` (mean MALA acceptance per walker-iteration) that stalled.

    Example:
        >>> stalled_fraction(np.array([0.6, 0.0, 0.005, 0.7]))
        0.5
    """
    return float(np.mean(np.asarray(accept_prob) < STALLED_ACCEPT_PROB))


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

    def on_host(history, num_rows, global_accept_prob, step_size, stranded_fraction, accept):
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
            stranded_fraction=float(stranded_fraction),
            max_rhat_allowed=rhat_threshold(history.shape[1]),
            stalled_fraction=stalled,
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
        )

    jax.lax.cond(at_end, check, lambda: None)


def _latent_draws(samples: Any, latent: Any) -> np.ndarray:
    """Draws ``(walkers, draws, dim)`` of the latent sites: deterministic ones add only cost."""
    if isinstance(samples, dict) and isinstance(latent, dict):
        samples = {name: value for name, value in samples.items() if name in latent}
    leaves = jax.tree.leaves(samples)
    return np.concatenate([np.reshape(leaf, (*leaf.shape[:2], -1)) for leaf in leaves], -1)


def check_run(mcmc: Any) -> RunHealth:
    """Check a finished ``MCMC(FlowMCKernel(...))`` run on its kept draws.

    Args:
        mcmc: A ``numpyro.infer.MCMC`` whose sampler is a :class:`~numpyro_ebm.FlowMCKernel`,
            after ``run``.

    Returns:
        The measured global acceptance, step size, R̂, stranded and stalled fractions, and the
        problems found.

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
    if not isinstance(mcmc.sampler, FlowMCKernel) or state is None:
        raise TypeError(
            "`check_run` takes an MCMC of a FlowMCKernel after `run`; got an MCMC of "
            f"{type(mcmc.sampler).__name__}" + (" that has not run." if state is None else ".")
        )
    if int(np.asarray(state.i)[0]) <= mcmc.num_warmup:  # NumPyro then returns zeros as draws
        raise ValueError(
            "`check_run` checks the draws kept after warm-up: expected an MCMC that has kept "
            "some; got one that has only warmed up (call `mcmc.run`)."
        )
    draws = _latent_draws(mcmc.get_samples(group_by_chain=True), state.z)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    global_accept_prob = float(np.mean(extra["global_accept_prob"]))
    step_size = float(np.asarray(state.step_size)[0])
    max_rhat = ensemble_rhat(draws)
    stranded_fraction = float(np.mean(extra["stranded"]))
    uses_local_moves = mcmc.sampler.num_local_steps > 0
    stalled = stalled_fraction(extra["accept_prob"]) if uses_local_moves else 0.0
    problems = find_problems(
        global_accept_prob,
        step_size,
        max_rhat,
        uses_flow=mcmc.sampler.global_move != "none",
        stranded_fraction=stranded_fraction,
        max_rhat_allowed=rhat_threshold(draws.shape[0]),
        stalled_fraction=stalled,
    )
    return RunHealth(global_accept_prob, step_size, max_rhat, stranded_fraction, stalled, problems)
