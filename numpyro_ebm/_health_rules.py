"""The rules of the health checks: thresholds, ensemble R̂, and the message of each problem.

Pure functions of measured numbers; :mod:`numpyro_ebm.health` applies them to a run (at the
end of warm-up, and to a finished ``MCMC``) and re-exports them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from numpyro_ebm.metrics import mixing_diagnostics

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
#: The share of an interval, at each end, that :func:`interval_ends_problems` looks at.
INTERVAL_EDGE = 0.1
#: A site's draws "pile at both ends" of its interval when each outer tenth holds more than
#: this share of them: 1.5 times what a flat posterior puts there. The aliased sinusoid's phase
#: (``benchmarks/aliased_sinusoid.py``), whose 1.3-per-day alias straddles 0 = 2π, holds about
#: 0.2 and 0.65 exactly, and a wrong run (seed 3, global moves only) 0.30 and 0.35.
MAX_EDGE_SHARE = 0.15
#: Fewest draws per walker for an R̂ (split R̂ halves each chain).
_MIN_DRAWS = 8


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
    healthy 2-D Gaussian's end-of-warm-up check fired in 2 runs of 10 (later 2 of 30).

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
    nonfinite_fraction: float = 0.0,
    num_flat: int = 0,
    num_held_stranded: int = 0,
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
        nonfinite_fraction: Fraction of the draws whose potential is not finite.
        num_flat: Coordinates found flat (improper), named first: the other checks see them.
        num_held_stranded: Walkers stranded in more than half of their kept draws
            (:func:`check_run` only).

    Returns:
        The messages, empty if every check passes.

    Example:
        >>> find_problems(0.5, 0.3, 1.002)
        ()
        >>> print(find_problems(0.0, 0.3, 1.002)[0])  # doctest: +ELLIPSIS
        mean global acceptance 0.000 < 0.01: the flow proposes ...
    """
    problems = []
    if num_flat > 0:
        problems.append(
            f"{num_flat} coordinate(s) are flat: the potential does not change along them, "
            "at the walkers or far away, so the posterior is improper there and the walkers "
            "drift in them without bound. The usual cause is an `obs_mask` site: NumPyro "
            "samples a value for each of its entries, and the observed ones have no density. "
            "The global acceptance, R̂ and stranded checks below may fire on that drift alone, "
            "and their remedies do not apply to it; the other coordinates' draws can still be "
            "right. To remove them, sample only the missing entries, as a site of their own."
        )
    if nonfinite_fraction > 0:
        problems.append(
            f"{nonfinite_fraction:.1%} of the draws sit where the potential is not finite "
            "(NaN or inf): they are not draws of the target. Walkers started where the model "
            "is undefined and no move took them out (every move from there is accepted only "
            "into finite values, and none was proposed); start them inside the support "
            "(init_params spread inside it, or the default init_to_sample) or check the model."
        )
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
            "the walkers drift until it overflows; check the model, or reparameterise it. A "
            "potential_fn must be the negative log density (flowMC and emcee take the log "
            "density itself): one of the wrong sign sends the walkers off to infinity."
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
            "(flow_options), or compare runs from other seeds or with fit_flow=False. A frozen "
            "flow (fit_flow=False) never learns their region: start the walkers from the draws "
            "of the run that fitted it (init_params=mcmc.last_state.z), or let it fit. Targets "
            "with heavier tails than the flow's show this too."
        )
    if uses_flow and num_held_stranded > 0:
        problems.append(
            f"{num_held_stranded} walker(s) stayed stranded for more than half of the kept "
            "draws: each holds a region the flow never proposes, whose weight then rests on "
            "those walkers alone and is likely wrong (a mode holding 0.23 of the mass kept 1 "
            "walker of 128 when init_to_median started all but that one in the other mode). "
            "Start the walkers spread over the modes (the default init_to_sample, not "
            "init_to_median or init_to_value), or use more walkers or a longer warm-up."
        )
    if stalled_fraction > MAX_STALLED_FRACTION:
        problems.append(
            f"local moves stalled in {stalled_fraction:.1%} of the walkers' iterations "
            f"(MALA acceptance < {STALLED_ACCEPT_PROB:.0%}; > {MAX_STALLED_FRACTION:.0%}): part "
            "of the posterior is much narrower than the step size. Most often it is the neck "
            "of a funnel (a centred hierarchical model, where NUTS reports divergences): only "
            "the flow moves walkers there, and it may underweight that region; reparameterise "
            "the model (numpyro.handlers.reparam with numpyro.infer.reparam.LocScaleReparam(0) "
            "on the group-level sites). Other causes, where the draws can still be right: a "
            "hard edge of the support (a bounded potential, or a Uniform(0, θ) likelihood; "
            "many proposals are then outside it, see num_nonfinite), tails heavier than a "
            "Gaussian's (a Student-t with few degrees of freedom) or modes of very different "
            "widths (one step size serves all); and a step size not adapted "
            "(num_warmup=0 or too short). Compare runs from other seeds."
        )
    return tuple(problems)


def stalled_fraction(accept_prob: Any) -> float:
    """Fraction of ``accept_prob`` (mean MALA acceptance per walker-iteration) that stalled.

    Example:
        >>> stalled_fraction(np.array([0.6, 0.0, 0.005, 0.7]))
        0.5
    """
    return float(np.mean(np.asarray(accept_prob) < STALLED_ACCEPT_PROB))


def end_shares(draws: Any, lower: Any, upper: Any) -> tuple[np.ndarray, np.ndarray]:
    """The shares of ``draws`` in the lowest and highest tenths of ``(lower, upper)``.

    Args:
        draws: ``(walkers, draws, *event)`` values of one site.
        lower: The interval's lower bound, broadcastable to ``event``.
        upper: Its upper bound.

    Returns:
        Two arrays of the event's shape.

    Example:
        >>> import numpy as np
        >>> phase = np.array([[0.1, 6.2, 6.1, 3.0]])  # (1 walker, 4 draws)
        >>> [float(share) for share in end_shares(phase, 0.0, 2 * np.pi)]
        [0.25, 0.5]
    """
    draws = np.asarray(draws)
    edge = INTERVAL_EDGE * (np.asarray(upper) - np.asarray(lower))
    low = np.mean(draws < np.asarray(lower) + edge, axis=(0, 1))
    high = np.mean(draws > np.asarray(upper) - edge, axis=(0, 1))
    return low, high


def interval_ends_problems(sites: dict[str, tuple[Any, Any, Any]]) -> tuple[str, ...]:
    """A message for each site of interval support whose draws pile at both of its ends.

    NumPyro samples such a site through a logit: mass at both ends of the interval is two tails
    at opposite ends of the real line, which neither the flow nor the local moves reach well, so
    the tails' weights may be wrong. A phase ``φ ~ Uniform(0, 2π)`` whose posterior straddles
    0 = 2π is the common case, and a silent one: the aliased sinusoid's weights came out
    0.15-0.24 off with global moves only, three runs of four with no other warning.

    Args:
        sites: ``{name: (draws, lower, upper)}``, draws ``(walkers, draws, *event)``.

    Returns:
        One message per such site (the coordinate whose ends hold least, if it has many).

    Example:
        >>> import numpy as np
        >>> wraps = np.array([[0.1, 6.2, 6.1, 3.0]])
        >>> print(interval_ends_problems({"phi": (wraps, 0.0, 6.3)})[0])  # doctest: +ELLIPSIS
        site 'phi': 25% and 50% of the draws lie in the lowest and highest tenths of its ...
        >>> interval_ends_problems({"phi": (np.array([[3.0, 3.1, 0.1, 3.3]]), 0.0, 6.3)})
        ()
    """
    problems = []
    for name, (draws, lower, upper) in sites.items():
        low, high = end_shares(draws, lower, upper)
        piled = np.minimum(low, high)
        if not np.any(piled > MAX_EDGE_SHARE):
            continue
        index = np.unravel_index(np.argmax(piled), piled.shape)
        where = f"{name}{[int(i) for i in index]}" if piled.ndim else name
        lower, upper = (
            float(np.broadcast_to(bound, piled.shape)[index]) for bound in (lower, upper)
        )
        problems.append(
            f"site '{where}': {low[index]:.0%} and {high[index]:.0%} of the draws lie in the "
            f"lowest and highest tenths of its interval ({lower:g}, {upper:g}). The sampler "
            "works on the logit of such a site, where these are two far-apart tails that the "
            "walkers and the flow reach poorly, so their weights may be wrong. If it is a phase "
            "or an angle, its posterior wraps around the interval's ends: sample it on the "
            "circle instead, for example as two Normal coefficients (A cos φ, A sin φ) in place "
            "of an amplitude and a phase (benchmarks/aliased_sinusoid.py), or as a unit vector."
        )
    return tuple(problems)
