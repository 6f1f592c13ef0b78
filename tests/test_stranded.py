"""Stranded walkers: where the flow has no mass, global moves can neither move a walker nor
bring others, so fitting must go on and a run that ends that way must say so.

The regression is a thin curved ridge (a "banana") whose ends the flow had not learned when its
global acceptance plateaued on the bulk: fitting stopped, the walkers that the local moves then
carried to the ends were stranded there, and E[x1²] came out 0.77 instead of 1 at a global
acceptance of 0.85 and R̂ 1.00. The rule that keeps fitting while walkers are stranded is tested
with its control (no stranded walker, fitting stops); the ridge's weight at a tolerance measured
between seeds (see ``_RIDGE_TOLERANCE``).
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _targets import vectorized_mcmc, without_settling
from flowjax.distributions import Normal
from numpyro.infer import init_to_median, init_to_sample

from numpyro_ebm import FlowMCKernel
from numpyro_ebm.energies import MLPEnergy
from numpyro_ebm.flow_base import FlowBaseEnergy
from numpyro_ebm.health import MAX_STRANDED_FRACTION, check_run
from numpyro_ebm.samplers.fit_progress import init_fit_progress, still_fitting, update_fit_progress
from numpyro_ebm.samplers.global_moves import imh_step, isir_step
from numpyro_ebm.training.negatives import flowmc_sampler


def _standard_normal(x):
    return 0.5 * jnp.sum(x**2)


@pytest.mark.parametrize("move", ["isir", "imh"])
@pytest.mark.parametrize(("flow_scale", "expected"), [(0.1, [False, True]), (1.0, [False, False])])
def test_a_walker_where_the_flow_has_no_mass_is_stranded(move, flow_scale, expected):
    # Target N(0, I₂); walkers at the origin and at (1.5, 1.5). A flow of scale 0.1 gives the
    # second log q ≈ −220 where it draws points of log q ≈ 3: its weight is e^200 above theirs.
    # The control, a flow of scale 1 (the target itself), strands nobody.
    position = jnp.array([[0.0, 0.0], [1.5, 1.5]])
    energy = jax.vmap(_standard_normal)(position)
    flow = Normal(jnp.zeros(2), jnp.full(2, flow_scale))
    key = jax.random.key(0)
    if move == "isir":
        info = isir_step(key, position, energy, flow, _standard_normal, num_particles=32,
                         chunk_size=8)[2]  # fmt: skip
    else:
        info = imh_step(key, position, energy, flow, _standard_normal)[2]
    assert info.stranded.tolist() == expected


def test_a_stranded_walker_restarts_fitting_after_a_plateau():
    progress = init_fit_progress()
    for _ in range(100):
        progress = update_fit_progress(progress, jnp.array(0.9))
    assert not bool(still_fitting(progress, 50))
    assert bool(still_fitting(update_fit_progress(progress, jnp.array(0.9), True), 50))


# -- The thin ridge ------------------------------------------------------------------------

_DIM, _BEND, _WIDTH, _WALKERS = 8, 3.0, 0.1, 128


def _banana(x):
    """x1 ~ N(0, 1), x2 | x1 ~ N(3 x1², 0.1²), the others N(0, 1): E[x1²] = 1."""
    ridge = (x[1] - _BEND * x[0] ** 2) ** 2 / (2 * _WIDTH**2)
    return 0.5 * x[0] ** 2 + ridge + 0.5 * jnp.sum(x[2:] ** 2)


def _ridge_run(**options):
    """E[x1²] (1 exactly), the health report and the kernel's own warnings."""
    mcmc = vectorized_mcmc(FlowMCKernel(potential_fn=_banana, **options), 1000, 400, _WALKERS)
    init = jax.random.normal(jax.random.key(0), (_WALKERS, _DIM))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc.run(jax.random.key(0), init_params=init)
    x1_squared = np.asarray(mcmc.get_samples(group_by_chain=True), np.float64)[..., 0] ** 2
    messages = [str(w.message) for w in caught if "FlowMCKernel" in str(w.message)]
    return float(x1_squared.mean()), check_run(mcmc), messages


#: |E[x1²] - 1| allowed. Not ArviZ's MCSE, which takes walkers sharing a flow as independent
#: chains and undercounts: seeds 0-3 gave 1.023, 0.968, 1.034, 0.975 on one machine and 0.962,
#: 0.999, 1.021, 0.971 on another (XLA compiles for the host's CPU, so trajectories differ),
#: z-scores up to 3.6 by that MCSE. Their sd, 0.027, puts 0.1 at 3.7 sds (a false alarm near
#: 2e-4); the lost ends this guards against gave 0.77.
_RIDGE_TOLERANCE = 0.1


def test_the_ends_of_a_thin_ridge_keep_their_weight():
    # Seed 0, and nothing stranded. MALA's one step size stalls in 6-8 % of the kept
    # iterations (on the bend and the ends, 0.1 wide), so the report says those parts rest on
    # the flow alone, as NUTS reports divergences there; that is its only problem
    # (tests/test_stalled.py). The stranded rule that keeps fitting past a plateau while the
    # ends are stranded is tested on its own above: with fit_patience=5 its end-to-end effect
    # no longer shows (seeds 0-3: mean 0.954 with and without it), as the preconditioner
    # pooled over the buffer keeps the ends in the flow's reach.
    x1_squared, health, messages = _ridge_run()
    assert abs(x1_squared - 1.0) < _RIDGE_TOLERANCE, x1_squared
    assert health.stranded_fraction <= MAX_STRANDED_FRACTION
    assert len(health.problems) == 1 and "local moves stalled" in health.problems[0]
    assert not any("stranded" in message for message in messages)


# -- EBM training's negatives ----------------------------------------------------------------


@pytest.mark.parametrize(("proposal_scale", "stranded"), [(0.05, True), (None, False)])
def test_flowmc_negatives_report_the_walkers_their_flow_misses(proposal_scale, stranded):
    # The model is q₀ = N(0, I) exactly and the walkers are exact draws from it. A sampler flow
    # of scale 0.05 leaves nearly every walker with a weight e^10 above its proposals'; the
    # control, the sampler flow q₀ itself, leaves none (weights all equal).
    base = Normal(jnp.zeros(2), jnp.ones(2))
    proposal = None if proposal_scale is None else Normal(jnp.zeros(2), jnp.full(2, proposal_scale))
    energy = FlowBaseEnergy(MLPEnergy(2, key=jax.random.key(0)), base, 1.0, proposal)
    sampler = flowmc_sampler(energy, 2, 1.0, num_particles=8, num_local_steps=1)
    params = eqx.filter(energy, eqx.is_inexact_array)
    walkers = energy.initial_walkers(jax.random.key(1), 256)
    state = sampler.init(jax.random.key(2), walkers, params)
    _, info = jax.jit(sampler.step)(state, params)
    fraction = float(info.stranded_fraction)
    assert fraction > 0.5 if stranded else fraction == 0.0


def _squared_mean(y):
    theta = numpyro.sample("theta", dist.Normal(0.3, 1.0))
    numpyro.sample("y", dist.Normal(theta**2, 1.0), obs=y)


@pytest.mark.parametrize(("init_strategy", "held"), [(init_to_median, True), (None, False)])
def test_a_walker_stranded_for_most_of_the_run_is_reported(init_strategy, held):
    # Regression (a user's y ~ N(θ², 1), P(θ > 0) = 0.77): init_to_median started one walker
    # of 128 at θ < 0 and the rest at θ > 0; that walker stayed stranded for the whole run,
    # 0.78 % of the walker-draws (under the 1 % threshold), and P(θ > 0) came out 0.992 with
    # no warning. Control: the default init_to_sample, walkers in both modes, stays quiet.
    # Settling (tests/test_settling.py) now keeps that walker from being stranded; the rule is
    # tested on the run that stranded it.
    y = 4.0 + np.random.default_rng(0).normal(0.0, 1.0, 10)
    kernel = FlowMCKernel(_squared_mean, init_strategy=init_strategy or init_to_sample)
    without_settling(kernel)
    mcmc = vectorized_mcmc(kernel, 500, 500, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run(jax.random.PRNGKey(0), y)
    health = check_run(mcmc)
    assert any("stayed stranded" in problem for problem in health.problems) == held, health
