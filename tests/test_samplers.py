"""Pure sampler functions: MALA/ULA, i-SIR/IMH, step-size adaptation, flow fitting.

Maths oracles (STYLE.md layer 2): acceptance ratios against hand-written formulas; a perfect flow
proposal is always accepted (IMH) or picks uniformly (i-SIR); flow densities against a change of
variables through ``jax.jacobian``. Statistical checks state their false-alarm rate.
"""

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _targets import GAUSS_MEAN, gaussian_draws, two_sided_z
from flowjax.bijections import Affine, RationalQuadraticSpline
from flowjax.distributions import Normal, StandardNormal, Transformed
from flowjax.flows import coupling_flow, masked_autoregressive_flow
from scipy import stats

from numpyro_ebm import _flow_construction, flows
from numpyro_ebm._kernel_setup import (
    _SCRATCH_ARRAYS_PER_PARTICLE,
    chunk_size_for_budget,
    potential_scratch_bytes,
)
from numpyro_ebm.flows import (
    default_flow,
    fit_flow,
    flow_optimizer,
    maximum_likelihood_loss,
    merge_flow,
    split_flow,
)
from numpyro_ebm.samplers import (
    imh_step,
    importance_log_weight,
    init_walkers,
    isir_step,
    mala_step,
    ula_step,
)
from numpyro_ebm.samplers.adaptation import adapt_step_size
from numpyro_ebm.samplers.langevin import mala_log_accept_ratio

# Family-wise false-alarm rate of each statistical test in this file.
ALPHA = 1e-3


def _wiggly(x):
    """A non-quadratic potential, so MALA's gradient terms do not cancel in the ratio."""
    return 0.5 * x[0] ** 2 + 0.5 * (x[1] - 0.5 * x[0] ** 2) ** 2 + 0.1 * jnp.sum(jnp.sin(3 * x))


def _hand_mala_log_ratio(x, x_new, step_size):
    """``U(x) − U(x') + log q(x | x') − log q(x' | x)`` in float64 NumPy."""
    energy = np.asarray(jax.vmap(_wiggly)(x), np.float64)
    energy_new = np.asarray(jax.vmap(_wiggly)(x_new), np.float64)
    grad = np.asarray(jax.vmap(jax.grad(_wiggly))(x), np.float64)
    grad_new = np.asarray(jax.vmap(jax.grad(_wiggly))(x_new), np.float64)
    x, x_new = np.asarray(x, np.float64), np.asarray(x_new, np.float64)
    log_q_back = -np.sum((x - x_new + step_size * grad_new) ** 2, -1) / (4 * step_size)
    log_q_forth = -np.sum((x_new - x + step_size * grad) ** 2, -1) / (4 * step_size)
    return energy - energy_new + log_q_back - log_q_forth


def _bernoulli_sum_z(outcomes, probabilities):
    """z-score of a sum of independent Bernoulli(p_i) outcomes."""
    outcomes, probabilities = np.asarray(outcomes, float), np.asarray(probabilities, float)
    variance = np.sum(probabilities * (1 - probabilities))
    return (outcomes.sum() - probabilities.sum()) / np.sqrt(variance)


# -- MALA / ULA ----------------------------------------------------------------------------


def test_mala_log_accept_ratio_matches_hand_formula():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
    x_new = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
    step_size = 0.3
    got = mala_log_accept_ratio(init_walkers(x, _wiggly), init_walkers(x_new, _wiggly), step_size)
    np.testing.assert_allclose(got, _hand_mala_log_ratio(x, x_new, step_size), rtol=1e-4, atol=1e-4)


def test_mala_step_accepts_with_hand_probability():
    num_walkers, step_size = 4000, 0.5
    x = jax.random.normal(jax.random.key(1), (num_walkers, 2))
    walkers = init_walkers(x, _wiggly)
    step = jax.jit(partial(mala_step, potential_fn=_wiggly, step_size=step_size))
    new, info = step(jax.random.key(2), walkers)
    accepted = np.asarray(info.accepted)
    assert 0.1 < accepted.mean() < 0.99  # both branches exercised
    # An accepted walker reveals its proposal: its acceptance probability is the hand formula.
    hand = np.minimum(1.0, np.exp(_hand_mala_log_ratio(x, new.position, step_size)))
    np.testing.assert_allclose(info.accept_prob[accepted], hand[accepted], rtol=1e-4, atol=1e-5)
    # A rejected walker keeps position, potential and gradient.
    for new_leaf, old_leaf in zip(new, walkers, strict=True):
        np.testing.assert_array_equal(new_leaf[~accepted], old_leaf[~accepted])
    np.testing.assert_allclose(
        new.potential_energy, jax.vmap(_wiggly)(new.position), rtol=1e-5, atol=1e-6
    )
    # Moves happen with the reported probabilities (z-test, two-sided, false alarm ALPHA).
    assert abs(_bernoulli_sum_z(accepted, info.accept_prob)) < two_sided_z(ALPHA)
    # Same key, same result; jit equals no-jit.
    new_eager, info_eager = mala_step(jax.random.key(2), walkers, _wiggly, step_size)
    np.testing.assert_array_equal(info_eager.accepted, info.accepted)
    np.testing.assert_allclose(new_eager.position, new.position, rtol=1e-6, atol=1e-6)


def _half_valid(x):
    """NaN for x₀ < 0, +inf for x₁ > 1, a standard Gaussian elsewhere."""
    return jnp.where(x[0] < 0, jnp.nan, jnp.where(x[1] > 1, jnp.inf, 0.5 * x @ x))


def _valid_walkers(num_walkers):
    x = jax.random.normal(jax.random.key(3), (num_walkers, 2))
    return jnp.stack([jnp.abs(x[:, 0]), -jnp.abs(x[:, 1])], axis=1)


def test_ula_moves_every_walker_where_finite():
    walkers = init_walkers(jax.random.normal(jax.random.key(4), (256, 2)), _wiggly)
    new, info = ula_step(jax.random.key(5), walkers, _wiggly, 0.1)
    assert bool(jnp.all(info.accepted)) and bool(jnp.all(info.accept_prob == 1.0))
    assert bool(jnp.all(jnp.any(new.position != walkers.position, axis=1)))
    assert not bool(jnp.any(info.nonfinite))


@pytest.mark.parametrize("step", [mala_step, ula_step], ids=["mala", "ula"])
def test_local_moves_reject_nonfinite_potential(step):
    walkers = init_walkers(_valid_walkers(512), _half_valid)
    # Step 1: proposals land in the NaN / +inf regions about half the time.
    new, info = step(jax.random.key(6), walkers, _half_valid, 1.0)
    assert bool(jnp.all(jnp.isfinite(new.position))) and bool(jnp.all(new.position[:, 0] >= 0))
    assert bool(jnp.all(new.position[:, 1] <= 1))
    assert bool(jnp.all(jnp.isfinite(new.potential_energy)))
    assert int(info.nonfinite.sum()) > 50
    assert not bool(jnp.any(info.accepted & info.nonfinite))


# -- Importance weights, i-SIR and IMH -----------------------------------------------------


def test_importance_log_weight():
    energy = jnp.array([1.0, jnp.nan, jnp.inf, -jnp.inf, 2.0, 2.0, 0.5])
    flow_log_prob = jnp.array([-2.0, 0.0, 0.0, 0.0, -jnp.inf, jnp.nan, jnp.inf])
    expected = np.array([1.0, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf])
    np.testing.assert_array_equal(importance_log_weight(energy, flow_log_prob), expected)


_PERFECT_LOC, _PERFECT_SCALE = jnp.array([1.0, -2.0]), jnp.array([0.5, 2.0])


def _perfect_potential(x):
    """The density of ``Normal(_PERFECT_LOC, _PERFECT_SCALE)``, shifted by a constant."""
    return 0.5 * jnp.sum(((x - _PERFECT_LOC) / _PERFECT_SCALE) ** 2) + 7.0


def _jit_global(move, flow, **options):
    """Jit a global move with the flow's arrays as arguments (plain jit rejects a flow)."""
    params, static = eqx.partition(flow, eqx.is_array)

    @jax.jit
    def run(key, position, energy, params):
        return move(key, position, energy, eqx.combine(params, static), **options)

    return lambda key, position, energy: run(key, position, energy, params)


@pytest.mark.parametrize("active_chunks", [None, 1, 2])
def test_isir_with_perfect_proposal_picks_uniformly(active_chunks):
    # Chunks of 3 for N − 1 = 7 fresh particles (the last chunk is ragged); with k chunks
    # active, N = 1 + min(3k, 7) particles.
    num_walkers, num_particles, chunk_size = 4000, 8, 3
    flow = Normal(_PERFECT_LOC, _PERFECT_SCALE)
    x = flow.sample(jax.random.key(7), (num_walkers,))
    step = _jit_global(
        isir_step,
        flow,
        potential_fn=_perfect_potential,
        num_particles=num_particles,
        chunk_size=chunk_size,
        num_active_chunks=active_chunks,
    )
    new_x, new_energy, info = step(jax.random.key(8), x, jax.vmap(_perfect_potential)(x))
    # Equal weights: P(move) = 1 − 1/N exactly with the first k chunks; chunks past the active
    # ones repeat the last active value.
    fresh = np.minimum(chunk_size * np.arange(1, 4), num_particles - 1)
    last_active = 2 if active_chunks is None else active_chunks - 1
    expected = 1 - 1 / (1 + fresh[np.minimum(np.arange(3), last_active)])
    np.testing.assert_allclose(
        info.accept_prob_by_chunks, np.broadcast_to(expected, (num_walkers, 3)), atol=1e-5
    )
    np.testing.assert_allclose(info.accept_prob, expected[-1], atol=1e-5)
    moved = np.any(np.asarray(new_x != x), axis=1)
    np.testing.assert_array_equal(moved, info.accepted)
    np.testing.assert_allclose(new_energy, jax.vmap(_perfect_potential)(new_x), rtol=1e-6)
    # Moves happen at rate 1 − 1/N (binomial z-test, false alarm ALPHA).
    assert abs(_bernoulli_sum_z(moved, info.accept_prob)) < two_sided_z(ALPHA)
    assert int(info.num_nonfinite.sum()) == 0


def test_imh_with_perfect_proposal_always_accepts():
    flow = Normal(_PERFECT_LOC, _PERFECT_SCALE)
    x = flow.sample(jax.random.key(9), (1000,))
    step = _jit_global(imh_step, flow, potential_fn=_perfect_potential)
    new_x, _, info = step(jax.random.key(10), x, jax.vmap(_perfect_potential)(x))
    np.testing.assert_allclose(info.accept_prob, 1.0, atol=1e-5)
    # log u < log ratio ≈ 0 fails only if u rounds within 1e-6 of 1: probability < 1e-3 here.
    assert bool(jnp.all(info.accepted)) and bool(jnp.all(new_x != x))


def _imperfect_setup(num_walkers):
    flow = Normal(jnp.zeros(2), 2.0 * jnp.ones(2))
    x = _PERFECT_LOC + _PERFECT_SCALE * jax.random.normal(jax.random.key(11), (num_walkers, 2))
    return flow, x, jax.vmap(_perfect_potential)(x)


def _log_weight(flow, x):
    return np.asarray(
        importance_log_weight(jax.vmap(_perfect_potential)(x), flow.log_prob(x)), np.float64
    )


def test_isir_two_particles_accept_prob_by_hand():
    # With N = 2 the pick is the fresh particle with probability w₁ / (w₀ + w₁).
    flow, x, energy = _imperfect_setup(4000)
    step = _jit_global(
        isir_step, flow, potential_fn=_perfect_potential, num_particles=2, chunk_size=1
    )
    new_x, _, info = step(jax.random.key(12), x, energy)
    moved = np.asarray(info.accepted)
    log_w0, log_w1 = _log_weight(flow, x), _log_weight(flow, new_x)
    hand = 1.0 / (1.0 + np.exp(log_w0 - log_w1))
    np.testing.assert_allclose(info.accept_prob[moved], hand[moved], rtol=1e-4, atol=1e-6)
    assert 0.05 < moved.mean() < 0.95
    assert abs(_bernoulli_sum_z(moved, info.accept_prob)) < two_sided_z(ALPHA)


def test_imh_accept_prob_by_hand():
    flow, x, energy = _imperfect_setup(4000)
    step = _jit_global(imh_step, flow, potential_fn=_perfect_potential)
    new_x, _, info = step(jax.random.key(13), x, energy)
    moved = np.asarray(info.accepted)
    hand = np.minimum(1.0, np.exp(_log_weight(flow, new_x) - _log_weight(flow, x)))
    np.testing.assert_allclose(info.accept_prob[moved], hand[moved], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(new_x[~moved], x[~moved])
    assert 0.05 < moved.mean() < 0.95
    assert abs(_bernoulli_sum_z(moved, info.accept_prob)) < two_sided_z(ALPHA)


@pytest.mark.parametrize("move", ["isir", "imh"])
def test_global_moves_never_pick_nonfinite_and_count_them(move):
    num_walkers, num_particles = 2000, 16
    flow = Normal(jnp.zeros(2), 2.0 * jnp.ones(2))
    x = _valid_walkers(num_walkers)
    # Eight walkers start where U is NaN (as `init_walkers` stores it: +inf): weight 0.
    x = x.at[:8, 0].set(-1.0)
    energy = init_walkers(x, _half_valid).potential_energy
    options = (
        dict(num_particles=num_particles, chunk_size=5)  # chunks 5, 5, 5 (+ nothing)
        if move == "isir"
        else {}
    )
    step = _jit_global(
        isir_step if move == "isir" else imh_step, flow, potential_fn=_half_valid, **options
    )
    new_x, new_energy, info = step(jax.random.key(14), x, energy)
    moved = np.asarray(info.accepted)
    ok = np.asarray((new_x[:, 0] >= 0) & (new_x[:, 1] <= 1) & jnp.isfinite(new_energy))
    assert ok[8:].all()  # a valid walker never moves to a NaN/inf point
    assert (ok[:8] | ~moved[:8]).all()  # an invalid walker moves only to a valid point
    # ... and does so whenever one is offered: i-SIR offers N − 1 (P(none valid) ≈ 0.65¹⁵,
    # so its acceptance is 1), IMH offers one.
    expected = 1.0 if move == "isir" else moved[:8].astype(float)
    np.testing.assert_array_equal(info.accept_prob[:8], expected)
    # Fresh proposals are invalid with p = 1 − P(x₀ ≥ 0) P(x₁ ≤ 1) under N(0, 2²I).
    p_invalid = 1 - 0.5 * stats.norm.cdf(1 / 2.0)
    num_fresh = num_walkers * (num_particles - 1 if move == "isir" else 1)
    z = (info.num_nonfinite.sum() - num_fresh * p_invalid) / np.sqrt(
        num_fresh * p_invalid * (1 - p_invalid)
    )
    assert abs(z) < two_sided_z(ALPHA)


@pytest.mark.parametrize("move", ["isir", "imh"])
def test_a_weightless_walker_offered_nothing_valid_reports_no_move(move):
    # Regression: i-SIR reported acceptance 1 for a walker of weight 0 whatever it was offered,
    # so a run where nothing moved (a flow of infinite scale) showed a global acceptance of 1.
    x = jnp.full((6, 2), -1.0)  # U is NaN there, as everywhere this flow proposes
    energy = init_walkers(x, _half_valid).potential_energy
    flow = Normal(jnp.full(2, -5.0), 0.1 * jnp.ones(2))
    options = dict(num_particles=8, chunk_size=4) if move == "isir" else {}
    step = _jit_global(
        isir_step if move == "isir" else imh_step, flow, potential_fn=_half_valid, **options
    )
    new_x, _, info = step(jax.random.key(3), x, energy)
    np.testing.assert_array_equal(new_x, x)
    np.testing.assert_array_equal(info.accepted, False)
    np.testing.assert_array_equal(info.accept_prob, 0.0)


def test_chunked_and_unchunked_isir_pick_the_same_distribution():
    # Target N(0.5, 0.7²) in 1-D, proposal N(0, 1.5²), walkers at exact draws. Chunks of 3 for
    # N − 1 = 7 fresh particles (last chunk ragged) against one chunk of 7: the new positions
    # must agree with each other and with the target. 5 checks, Bonferroni at ALPHA.
    num_walkers, num_particles = 4000, 8
    loc, scale = 0.5, 0.7

    def potential(x):
        return 0.5 * jnp.sum(((x - loc) / scale) ** 2)

    flow = Normal(jnp.zeros(1), 1.5 * jnp.ones(1))
    x = loc + scale * jax.random.normal(jax.random.key(15), (num_walkers, 1))
    energy = jax.vmap(potential)(x)
    results = {}
    for chunk_size in (3, 7):
        step = _jit_global(
            isir_step,
            flow,
            potential_fn=potential,
            num_particles=num_particles,
            chunk_size=chunk_size,
        )
        results[chunk_size] = step(jax.random.key(16), x, energy)
    alpha = ALPHA / 5
    picks = {c: np.asarray(r[0][:, 0]) for c, r in results.items()}
    assert stats.ks_2samp(picks[3], picks[7]).pvalue > alpha
    for c in (3, 7):
        assert stats.kstest(picks[c], stats.norm(loc, scale).cdf).pvalue > alpha
    moved = {c: np.asarray(r[2].accepted).mean() for c, r in results.items()}
    pooled = (moved[3] + moved[7]) / 2
    z = (moved[3] - moved[7]) / np.sqrt(2 * pooled * (1 - pooled) / num_walkers)
    assert abs(z) < two_sided_z(alpha)
    # Same mean acceptance probability (each is an average of 4000 i.i.d. values in [0, 1]).
    accept = {c: np.asarray(r[2].accept_prob) for c, r in results.items()}
    se = np.sqrt((accept[3].var() + accept[7].var()) / num_walkers)
    assert abs(accept[3].mean() - accept[7].mean()) / se < two_sided_z(alpha)


def test_isir_scratch_memory_is_bounded_by_the_chunk_not_the_particles():
    # Compiled temporary memory of one i-SIR step, N = 257: chunks of 16 must stay within the
    # kernel's per-particle estimate (`_SCRATCH_ARRAYS_PER_PARTICLE` position-sized arrays per
    # fresh particle), and drawing all 256 at once must exceed that same budget.
    num_walkers, dim, num_particles = 256, 4, 257
    flow = Normal(jnp.zeros(dim), 2.0 * jnp.ones(dim))
    params, static = eqx.partition(flow, eqx.is_array)
    x = jnp.zeros((num_walkers, dim))

    def temp_bytes(chunk_size):
        def run(key, position, energy, params):
            return isir_step(
                key,
                position,
                energy,
                eqx.combine(params, static),
                lambda z: 0.5 * z @ z,
                num_particles=num_particles,
                chunk_size=chunk_size,
            )

        compiled = jax.jit(run).lower(jax.random.key(0), x, jnp.zeros(num_walkers), params)
        return compiled.compile().memory_analysis().temp_size_in_bytes

    per_particle = num_walkers * dim * 4 * _SCRATCH_ARRAYS_PER_PARTICLE
    baseline, chunked, unchunked = (temp_bytes(c) for c in (1, 16, 256))
    assert chunked - baseline <= 16 * per_particle
    assert unchunked - baseline > 16 * per_particle
    assert unchunked > 10 * chunked


def test_the_particle_budget_counts_the_potentials_own_scratch():
    # A model's data plate: each evaluation's scratch grows with the data, which the budget
    # left out (a mixture on 10⁵ points drew 31 particles of 128 walkers at once: 9 GB
    # against the 256-MiB default). The chunk the budget picks must keep a step within it;
    # the chunk of the old estimate, which counted the flow's arrays alone, must not.
    num_walkers, dim, budget = 64, 2, 2**24
    data = jnp.linspace(-3.0, 3.0, 20_000)

    def potential(z):
        modes = jnp.stack([-((data - z[0]) ** 2), -((data + z[1]) ** 2)])
        return -jnp.sum(jax.nn.logsumexp(modes, axis=0))

    own = potential_scratch_bytes(potential, dim, jnp.float32)
    assert own >= 2 * data.size * 4  # the stacked modes, at least
    options = dict(num_particles=32, chunk_size=None, memory_budget_bytes=budget)
    counted = chunk_size_for_budget(num_walkers, dim, "float32", **options, potential_bytes=own)
    flow_only = chunk_size_for_budget(num_walkers, dim, "float32", **options)
    assert counted < flow_only == 31
    flow = Normal(jnp.zeros(dim), jnp.ones(dim))
    x = jnp.zeros((num_walkers, dim))

    def temp_bytes(chunk_size):
        step = partial(isir_step, flow=flow, potential_fn=potential, num_particles=32)
        compiled = jax.jit(partial(step, chunk_size=chunk_size)).lower(
            jax.random.key(0), x, jnp.zeros(num_walkers)
        )
        return compiled.compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(counted) <= budget < temp_bytes(flow_only)


# -- Adaptation ----------------------------------------------------------------------------


def test_adapt_step_size_moves_toward_target():
    assert float(adapt_step_size(0.1, 0.9, 0.574, 0)) > 0.1
    assert float(adapt_step_size(0.1, 0.2, 0.574, 0)) < 0.1
    assert float(adapt_step_size(0.1, 0.574, 0.574, 0)) == pytest.approx(0.1)
    # The Robbins–Monro gain decays: later rounds move the step size less.
    early = abs(np.log(float(adapt_step_size(0.1, 0.9, 0.574, 0)) / 0.1))
    late = abs(np.log(float(adapt_step_size(0.1, 0.9, 0.574, 100)) / 0.1))
    assert 0 < late < early


# -- Flows ---------------------------------------------------------------------------------


def _perturbed(flow, key, scale=0.3):
    """Shift every trainable array, so the near-identity default flow is far from identity."""
    params, static = split_flow(flow)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        p + scale * jax.random.normal(k, p.shape, p.dtype)
        for p, k in zip(leaves, keys, strict=True)
    ]
    return merge_flow(jax.tree.unflatten(treedef, leaves), static)


@pytest.mark.parametrize("dim", [1, 3], ids=["autoregressive", "coupling"])
def test_default_flow_log_prob_is_a_change_of_variables(dim):
    flow = _perturbed(default_flow(jax.random.key(17), dim, loc=0.5, scale=2.0), jax.random.key(18))
    # One bijection from the standard-normal base to x: coupling (or MAF) layers, then the affine.
    merged = flow.merge_transforms()
    assert type(merged.base_dist).__name__ == "StandardNormal"

    @eqx.filter_jit
    def check(flow, merged, key):
        x = flow.sample(key, (16,))
        u = jax.vmap(merged.bijection.inverse)(x)
        jacobian = jax.vmap(jax.jacobian(merged.bijection.transform))(u)
        _, log_abs_det = jnp.linalg.slogdet(jacobian)
        round_trip = jax.vmap(merged.bijection.transform)(u)
        return (
            x,
            round_trip,
            flow.log_prob(x),
            merged.base_dist.log_prob(u) - log_abs_det,
            log_abs_det,
        )

    x, round_trip, log_prob, expected, log_abs_det = check(flow, merged, jax.random.key(19))
    np.testing.assert_allclose(round_trip, x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-4)
    # The perturbation made the map non-trivial (else the check above is vacuous).
    assert float(jnp.max(jnp.abs(log_abs_det - dim * jnp.log(2.0)))) > 1e-2


@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("dim", [1, 2, 5], ids=["autoregressive", "flip", "permutation"])
def test_default_flow_is_the_flow_flowjax_builds_eagerly(dim, transformer):
    # default_flow compiles its construction (seconds saved on small models) and swaps in
    # closures made outside the trace; it must build exactly what flowjax builds eagerly.
    key, loc, scale = jax.random.key(5), jnp.linspace(-1.0, 1.0, dim), 2.0
    built = default_flow(key, dim, loc=loc, scale=scale, transformer=transformer)
    elementwise = (
        flows.bounded_affine()
        if transformer == "affine"
        else RationalQuadraticSpline(knots=8, interval=4.0)
    )
    stack = (coupling_flow if dim > 1 else masked_autoregressive_flow)(
        key, base_dist=StandardNormal((dim,)), transformer=elementwise, flow_layers=4, nn_width=32
    )
    eager = Transformed(
        _flow_construction.shrink_final_conditioner_layers(stack), Affine(loc, jnp.full(dim, scale))
    )
    arrays = [jax.tree.leaves(eqx.filter(flow, eqx.is_array)) for flow in (built, eager)]
    for ours, theirs in zip(*arrays, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    # Used outside the trace (a leaked tracer would raise here), both give one density.
    x = eager.sample(jax.random.key(6), (8,))
    np.testing.assert_allclose(built.log_prob(x), eager.log_prob(x), rtol=1e-5, atol=1e-5)
    # Another key builds other weights: the builder does not return a cached flow.
    other = default_flow(jax.random.key(7), dim, loc=loc, scale=scale, transformer=transformer)
    other_arrays = jax.tree.leaves(eqx.filter(other, eqx.is_array))
    assert not all(np.array_equal(a, b) for a, b in zip(other_arrays, arrays[0], strict=True))


def test_a_default_flow_built_first_inside_jit_leaves_later_flows_usable():
    # The compiled builder is cached per options: made first under a user's `jit`, it must
    # not keep that trace's tracers (every later flow of those options would hold them).
    _flow_construction._cached_builder.cache_clear()
    x = jnp.array([0.3, -0.2])
    traced = jax.jit(lambda key: default_flow(key, 2, nn_width=7).log_prob(x))(jax.random.key(0))
    later = default_flow(jax.random.key(0), 2, nn_width=7).log_prob(x)
    np.testing.assert_allclose(later, traced, rtol=1e-6)


@pytest.mark.parametrize(
    ("transformer", "finite"), [("bounded", True), ("flowjax's softplus scale", False)]
)
def test_affine_coupling_densities_stay_finite_however_large_the_weights(
    monkeypatch, transformer, finite
):
    # A fit can drive the conditioners' weights up (walkers narrowing 1000-fold): with
    # flowjax's softplus scale the map became explosive and every point's log-density -inf
    # (so every fit step after was skipped). The soft-clamped scale keeps it finite; the
    # softplus one is the negative control.
    if transformer != "bounded":
        monkeypatch.setattr(flows, "bounded_affine", Affine)
    params, static = split_flow(default_flow(jax.random.key(0), 2, transformer="affine"))
    grid = jnp.stack(jnp.meshgrid(*2 * [jnp.linspace(-4.0, 4.0, 21)]), -1).reshape(-1, 2)
    log_prob = merge_flow(jax.tree.map(lambda p: 100.0 * p, params), static).log_prob(grid)
    assert bool(jnp.all(jnp.isfinite(log_prob))) == finite


def test_fit_flow_lowers_the_held_out_loss_and_ignores_nonfinite_rows():
    # `fit_flow` is flow-agnostic; an affine flow keeps the compile cheap (the spline flow is
    # fitted in every FlowMCKernel warm-up of test_mcse / test_kernel, and in its doctest).
    flow = Normal(jnp.zeros(2), 3.0 * jnp.ones(2))
    params, static = split_flow(flow)
    optimizer = flow_optimizer(1e-2)
    train = gaussian_draws(jax.random.key(21), 512)
    held_out = gaussian_draws(jax.random.key(22), 512)
    train = train.at[:32].set(jnp.nan).at[32:40].set(jnp.inf)  # walkers in bad places
    fit = eqx.filter_jit(partial(fit_flow, optimizer=optimizer, num_steps=200, batch_size=128))
    new_params, _, loss = fit(jax.random.key(23), params, optimizer.init(params), static, train)
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new_params))
    before = float(maximum_likelihood_loss(params, static, held_out))
    after = float(maximum_likelihood_loss(new_params, static, held_out))
    # N(0, 3²I) against the Gaussian: the KL gap is > 1 nat; fitting must recover most of it.
    assert after < before - 0.5
    fitted = merge_flow(new_params, static)
    np.testing.assert_allclose(fitted.bijection.loc, GAUSS_MEAN, atol=0.2)
