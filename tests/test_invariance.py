"""Invariance from exact draws (STYLE.md layer 3).

Walkers start at exact, independent draws of a known target; a few rounds of the flowMC round
with a FROZEN, deliberately imperfect flow (a wide Gaussian, ``adapting=False``) must leave them
distributed as the target. Walkers move independently given the frozen flow, so after the rounds
they are still i.i.d.: means, variances (and the mixture's mode weight) get z-tests and each
marginal a one-sample KS test.

Each target's family of checks has false-alarm rate ``ALPHA`` (Bonferroni). Broken kernels, i-SIR
whose weights forget the flow density and MALA without its Hastings term, must fail the same
family: their largest statistic, as a multiple of its own threshold, must exceed 1.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _targets import (
    GAUSS_COV,
    GAUSS_MEAN,
    MIX_MEAN,
    MIX_SHIFT,
    MIX_VAR,
    MIX_WEIGHT,
    gaussian_draws,
    gaussian_marginal_cdfs,
    gaussian_potential,
    in_plus_mode,
    mixture_draws,
    mixture_marginal_cdfs,
    mixture_potential,
    round_config,
    two_sided_z,
)
from flowjax.distributions import Normal
from scipy import stats

from numpyro_ebm.flows import split_flow
from numpyro_ebm.samplers import flowmc, global_moves, langevin
from numpyro_ebm.samplers.adaptation import Preconditioner
from numpyro_ebm.samplers.flowmc import flowmc_round
from numpyro_ebm.samplers.warmup import init_adaptation

# Family-wise false-alarm rate of each target's checks.
ALPHA = 1e-3
NUM_WALKERS = 2000
NUM_ROUNDS = 6
# MALA step: acceptance ≈ 0.63 on the Gaussian, near the 0.574 target of warm-up.
STEP_SIZE = 0.15


class Target(NamedTuple):
    potential: callable
    draws: callable
    mean: np.ndarray
    var: np.ndarray
    fourth_central: np.ndarray  # E(x - mean)^4 per coordinate, for the variance's SE
    cdfs: list
    plus_weight: float | None  # weight of the + mode, if a mixture
    flow_scale: float  # of the frozen flow N(0, flow_scale² I)


def _gaussian_target():
    var = np.diag(GAUSS_COV)
    return Target(
        gaussian_potential,
        gaussian_draws,
        GAUSS_MEAN,
        var,
        3 * var**2,
        gaussian_marginal_cdfs(),
        None,
        1.5,  # offset from the mean (1, −0.5), uncorrelated, too wide in x₁
    )


def _mixture_target():
    # Per coordinate: w N(a, 1) + (1 − w) N(−a, 1); central moments by quadrature.
    grid = np.linspace(-15, 15, 30001)
    fourth = []
    for i, shift in enumerate(MIX_SHIFT):
        density = MIX_WEIGHT * stats.norm.pdf(grid - shift) + (1 - MIX_WEIGHT) * stats.norm.pdf(
            grid + shift
        )
        fourth.append(np.trapezoid((grid - MIX_MEAN[i]) ** 4 * density, grid))
    return Target(
        mixture_potential,
        mixture_draws,
        MIX_MEAN,
        MIX_VAR,
        np.array(fourth),
        mixture_marginal_cdfs(),
        MIX_WEIGHT,
        3.0,  # covers both modes (±3, ±3), but unimodal: far from the target
    )


TARGETS = {"gaussian": _gaussian_target(), "mixture": _mixture_target()}


#: Local moves run in ``u = L⁻¹ (x − loc)``; any fixed map leaves the target invariant, so the
#: tests use deliberately poor ones (off-centre, wrong scales, a spurious correlation).
PRECONDITIONERS = {
    "identity": Preconditioner(jnp.zeros(2), jnp.ones(2)),
    "diagonal": Preconditioner(jnp.array([0.5, -0.2]), jnp.array([1.3, 0.5])),
    "dense": Preconditioner(jnp.array([-0.3, 0.4]), jnp.array([[1.1, 0.0], [-0.4, 0.6]])),
}


def _run_rounds(
    target,
    *,
    global_move,
    num_local_steps,
    step_size,
    preconditioner="diagonal",
    seed=0,
    particle_chunks=None,
):
    """NUM_ROUNDS frozen rounds from exact draws; returns the final positions.

    With ``particle_chunks``, i-SIR draws only that many of its 3 chunks of particles, as an
    adaptive kernel does after warm-up.
    """
    # Imperfect on purpose (see `Target.flow_scale`), and frozen.
    flow = Normal(jnp.zeros(2), target.flow_scale * jnp.ones(2))
    flow_params, flow_static = split_flow(flow)
    config = round_config(
        num_local_steps=num_local_steps,
        global_move=global_move,
        fit_flow=False,
        standardise_flow=False,  # the flow above is over model coordinates, used as given
        dense_preconditioner=preconditioner == "dense",
        adapt_num_particles=particle_chunks is not None,
    )
    key_draws, key_rounds = jax.random.split(jax.random.key(seed))
    position = target.draws(key_draws, NUM_WALKERS)
    state = init_adaptation(
        position,
        flow_params,
        config.optimizer.init(flow_params),
        step_size=step_size,
        buffer_size=1,
        dense_preconditioner=config.dense_preconditioner,
        num_particle_chunks=3,  # 7 fresh particles in chunks of 3
    )
    if particle_chunks is not None:
        state = state._replace(particle_chunks=jnp.asarray(particle_chunks, jnp.int32))
    # Not adapting, the round uses the averaged step size and this fixed preconditioner.
    state = state._replace(
        step_size_average=jnp.asarray(step_size),
        preconditioner=PRECONDITIONERS[preconditioner],
    )

    @jax.jit
    def run(key, position, state):
        def one_round(carry, key):
            position, state = carry
            position, state, info = flowmc_round(
                key, position, state, target.potential, flow_static, config, jnp.array(False)
            )
            return (position, state), (info.accept_prob, info.global_accept_prob)

        return jax.lax.scan(one_round, (position, state), jax.random.split(key, NUM_ROUNDS))

    (position, final), (accept_prob, global_accept_prob) = run(key_rounds, position, state)
    # The flow, step size and preconditioner stayed frozen.
    assert float(final.step_size_average) == pytest.approx(step_size)
    frozen = jax.tree.leaves((flow_params, state.preconditioner))
    after = jax.tree.leaves((final.flow_params, final.preconditioner))
    for before, now in zip(frozen, after, strict=True):
        np.testing.assert_array_equal(before, now)
    return np.asarray(position, np.float64), accept_prob, global_accept_prob


def _excess(x, target):
    """Each check's statistic divided by its threshold (> 1 means the check fails)."""
    checks = []
    num = x.shape[0]
    # 2 means + 2 variances (+ 1 weight) z-tests and 2 KS tests share ALPHA.
    num_checks = 6 + (target.plus_weight is not None)
    z = two_sided_z(ALPHA, num_checks)
    for i in range(2):
        mean_z = (x[:, i].mean() - target.mean[i]) / np.sqrt(target.var[i] / num)
        var_se = np.sqrt((target.fourth_central[i] - target.var[i] ** 2) / num)
        var_z = (x[:, i].var(ddof=1) - target.var[i]) / var_se
        checks += [abs(mean_z) / z, abs(var_z) / z]
        p_value = stats.kstest(x[:, i], target.cdfs[i]).pvalue
        # Express the KS check on the same scale: log p / log(threshold) > 1 iff p < threshold.
        checks.append(np.log(max(p_value, 1e-300)) / np.log(ALPHA / num_checks))
    if target.plus_weight is not None:
        weight = in_plus_mode(x).mean()
        weight_z = (weight - target.plus_weight) / np.sqrt(
            target.plus_weight * (1 - target.plus_weight) / num
        )
        checks.append(abs(weight_z) / z)
    return np.array(checks)


@pytest.mark.parametrize("name", ["gaussian", "mixture"])
@pytest.mark.parametrize("global_move", ["isir", "imh"])
def test_frozen_round_leaves_the_target_invariant(name, global_move):
    target = TARGETS[name]
    x, accept_prob, global_accept_prob = _run_rounds(
        target, global_move=global_move, num_local_steps=2, step_size=STEP_SIZE
    )
    # Both moves actually moved walkers (else invariance is trivial).
    assert 0.05 < float(jnp.mean(global_accept_prob)) < 0.95
    assert 0.3 < float(jnp.mean(accept_prob)) < 0.99
    excess = _excess(x, target)
    assert excess.max() < 1.0, excess


@pytest.mark.parametrize("name", ["gaussian", "mixture"])
def test_isir_with_fewer_particle_chunks_leaves_the_target_invariant(name):
    target = TARGETS[name]
    x, _, fewer_accept = _run_rounds(
        target, global_move="isir", num_local_steps=2, step_size=STEP_SIZE, particle_chunks=1
    )
    _, _, all_accept = _run_rounds(
        target, global_move="isir", num_local_steps=2, step_size=STEP_SIZE
    )
    # 4 particles instead of 8 really were used: fewer walkers move.
    assert 0.05 < float(jnp.mean(fewer_accept)) < float(jnp.mean(all_accept)) - 0.02
    excess = _excess(x, target)
    assert excess.max() < 1.0, excess


def test_isir_without_the_flow_density_fails_the_same_check(monkeypatch):
    # Broken i-SIR: weights exp(−U) instead of exp(−U)/q, i.e. the picks follow π·q, not π.
    correct = global_moves.importance_log_weight
    monkeypatch.setattr(
        global_moves,
        "importance_log_weight",
        lambda energy, flow_log_prob: correct(energy, jnp.zeros_like(flow_log_prob)),
    )
    x, _, _ = _run_rounds(
        TARGETS["gaussian"], global_move="isir", num_local_steps=2, step_size=STEP_SIZE
    )
    excess = _excess(x, TARGETS["gaussian"])
    assert excess.max() > 1.0, excess


def test_mala_without_the_hastings_term_fails_the_same_check(monkeypatch):
    # Broken MALA: accept with π(x')/π(x) only, dropping q(x | x')/q(x' | x).
    def no_hastings(current, proposal, step_size):
        log_ratio = current.potential_energy - proposal.potential_energy
        return jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)

    monkeypatch.setattr(langevin, "mala_log_accept_ratio", no_hastings)
    x, _, _ = _run_rounds(
        TARGETS["gaussian"], global_move="none", num_local_steps=5, step_size=STEP_SIZE
    )
    excess = _excess(x, TARGETS["gaussian"])
    assert excess.max() > 1.0, excess


@pytest.mark.parametrize("preconditioner", sorted(PRECONDITIONERS))
def test_mala_alone_leaves_the_target_invariant(preconditioner):
    # The correct twin of the broken-MALA control: same settings, Hastings term kept.
    x, accept_prob, _ = _run_rounds(
        TARGETS["gaussian"],
        global_move="none",
        num_local_steps=5,
        step_size=STEP_SIZE,
        preconditioner=preconditioner,
    )
    assert 0.3 < float(jnp.mean(accept_prob)) < 0.99
    excess = _excess(x, TARGETS["gaussian"])
    assert excess.max() < 1.0, excess


def test_mala_with_inconsistent_coordinates_fails_the_same_check(monkeypatch):
    # Broken preconditioning: positions enter the latent space without the scale division,
    # so every accepted move rescales the walker about `loc`.
    monkeypatch.setattr(flowmc, "to_latent", lambda pre, x: x - pre.loc)
    x, _, _ = _run_rounds(
        TARGETS["gaussian"], global_move="none", num_local_steps=5, step_size=STEP_SIZE
    )
    excess = _excess(x, TARGETS["gaussian"])
    assert excess.max() > 1.0, excess
