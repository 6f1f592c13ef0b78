"""Tests of `numpyro_ebm.likelihood`: log Z of an energy by importance sampling and AIS.

Oracles have a known Z: a shifted correlated Gaussian U(x) = ½(x − μ)ᵀΛ(x − μ), log Z =
d/2 log 2π − ½ log det Λ, and a two-component mixture with weights 0.3/0.7 whose Z is set by
construction, U = −log(Z · mixture density). Each accuracy check is |log Ẑ − log Z| < 3·stderr:
under normality of log Ẑ a false alarm has probability 0.27% per check. Seeds are fixed and were
not hunted. Negative controls: a proposal whose log q is misreported by a constant must fail the
same check (the check has power), and poor proposals must make `log_normalizer` switch to AIS.
"""

import json
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flowjax.distributions import Normal
from jax.scipy.special import logsumexp

from numpyro_ebm.flows import default_flow
from numpyro_ebm.likelihood import (
    LogNormalizerEstimate,
    annealed_log_normalizer,
    heldout_log_likelihood,
    importance_log_normalizer,
    log_normalizer,
)

# Two-sided normal quantile for a 0.27% false-alarm rate per check.
NUM_STDERR = 3.0
# "Good proposal" precision target of the brief: a standard error of log Ẑ of at most 0.05 nats.
GOOD_STDERR = 0.05
# Mixture normalising constant, arbitrary: log Z = 3.7 by construction.
MIXTURE_LOG_Z = 3.7
MIXTURE_WEIGHTS = (0.3, 0.7)


def gaussian_oracle(dim, seed):
    """Mean, covariance, energy and exact log Z of a shifted, correlated Gaussian."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim)
    factor = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    # Correlated but well conditioned: eigenvalues of Σ in about [0.5, 4].
    covariance = 0.5 * np.eye(dim) + 0.5 * factor @ factor.T
    precision = jnp.asarray(np.linalg.inv(covariance), jnp.float32)
    mean_jnp = jnp.asarray(mean, jnp.float32)

    def potential_fn(x):
        residual = x - mean_jnp
        return 0.5 * residual @ precision @ residual

    log_z = 0.5 * dim * math.log(2 * math.pi) + 0.5 * np.linalg.slogdet(covariance)[1]
    return mean, covariance, potential_fn, log_z


def mixture_potential(dim, separation):
    """U = −log(Z · (0.3 N(−s e₁, I) + 0.7 N(+s e₁, I))), s = separation / 2."""
    centres = jnp.zeros((2, dim)).at[:, 0].set(jnp.array([-0.5, 0.5]) * separation)
    log_weights = jnp.log(jnp.array(MIXTURE_WEIGHTS))

    def potential_fn(x):
        log_components = -0.5 * jnp.sum((x - centres) ** 2, axis=-1) - 0.5 * dim * math.log(
            2 * math.pi
        )
        return -MIXTURE_LOG_Z - logsumexp(log_weights + log_components)

    return potential_fn


def assert_within_stderr(estimate, log_z):
    assert math.isfinite(estimate.stderr) and estimate.stderr > 0, estimate
    error = abs(estimate.log_normalizer - log_z)
    assert error < NUM_STDERR * estimate.stderr, (error, estimate)


class OffsetProposal(eqx.Module):
    """A proposal that misreports log q by ``offset``: log Ẑ must come out low by ``offset``."""

    base: Normal
    offset: float

    def sample(self, key, shape=()):
        return self.base.sample(key, shape)

    def log_prob(self, x):
        return self.base.log_prob(x) + self.offset

    def sample_and_log_prob(self, key, shape=()):
        x, log_prob = self.base.sample_and_log_prob(key, shape)
        return x, log_prob + self.offset


def imperfect_gaussian_proposal(mean, covariance, scale_factor, shift):
    """Independent Normal with each marginal's sd scaled and its mean shifted by ``shift`` sd."""
    sd = np.sqrt(np.diag(covariance))
    return Normal(jnp.asarray(mean + shift * sd), jnp.asarray(scale_factor * sd))


# --- Oracles ----------------------------------------------------------------------------------


def test_importance_gaussian_2d_default_flow_proposal():
    mean, covariance, potential_fn, log_z = gaussian_oracle(2, seed=0)
    sd = np.sqrt(np.diag(covariance))
    # An untrained default flow (near identity): q ignores the correlation, 1.5× too wide and
    # shifted by 0.3 sd.
    flow = default_flow(
        jax.random.key(0), 2, loc=jnp.asarray(mean + 0.3 * sd), scale=jnp.asarray(1.5 * sd)
    )
    estimate = importance_log_normalizer(jax.random.key(1), potential_fn, flow, 4000)
    assert estimate.method == "importance" and estimate.num_samples == 4000
    assert 0 < estimate.ess <= 4000
    assert_within_stderr(estimate, log_z)
    assert estimate.stderr <= GOOD_STDERR


def test_importance_gaussian_16d():
    mean, covariance, potential_fn, log_z = gaussian_oracle(16, seed=1)
    proposal = imperfect_gaussian_proposal(mean, covariance, scale_factor=1.2, shift=0.1)
    estimate = importance_log_normalizer(jax.random.key(2), potential_fn, proposal, 8000)
    assert_within_stderr(estimate, log_z)
    assert estimate.stderr <= GOOD_STDERR


@pytest.mark.parametrize("dim", [2, 64])
def test_importance_mixture(dim):
    potential_fn = mixture_potential(dim, separation=3.0)
    # Covers both modes (±1.5 on x₀) with a broad first coordinate, slightly wide elsewhere.
    scale = jnp.ones(dim).at[0].set(2.5) * jnp.where(jnp.arange(dim) == 0, 1.0, 1.1)
    proposal = Normal(jnp.full(dim, 0.1), scale)
    estimate = importance_log_normalizer(jax.random.key(3), potential_fn, proposal, 8000)
    assert_within_stderr(estimate, MIXTURE_LOG_Z)
    assert estimate.stderr <= GOOD_STDERR


def test_misreported_proposal_fails_the_check():
    # Negative control: log q off by 0.3 nats shifts log Ẑ by −0.3 for both estimators; the
    # 3-stderr check must catch it, else it has no power at this sample size.
    mean, covariance, potential_fn, log_z = gaussian_oracle(2, seed=0)
    base = imperfect_gaussian_proposal(mean, covariance, scale_factor=1.5, shift=0.3)
    proposal = OffsetProposal(base, 0.3)
    for estimate in (
        importance_log_normalizer(jax.random.key(4), potential_fn, proposal, 4000),
        annealed_log_normalizer(
            jax.random.key(4), potential_fn, proposal, 1000, num_temperatures=20
        ),
    ):
        assert abs(estimate.log_normalizer - (log_z - 0.3)) < NUM_STDERR * estimate.stderr
        assert abs(estimate.log_normalizer - log_z) > NUM_STDERR * estimate.stderr


def test_annealed_recovers_gaussian_from_narrow_shifted_proposal():
    mean, covariance, potential_fn, log_z = gaussian_oracle(16, seed=1)
    proposal = imperfect_gaussian_proposal(mean, covariance, scale_factor=0.6, shift=0.5)
    importance = importance_log_normalizer(jax.random.key(5), potential_fn, proposal, 1000)
    annealed = annealed_log_normalizer(
        jax.random.key(5), potential_fn, proposal, 1000, num_temperatures=100
    )
    assert annealed.method == "annealed"
    # The proposal is poor for plain IS, and annealing repairs it.
    assert importance.ess / importance.num_samples < 0.05
    assert annealed.ess > 5 * importance.ess
    assert_within_stderr(annealed, log_z)


def test_annealed_is_calibrated_on_scales_thirty_times_apart():
    # Target sds from 0.1 to 3 in d = 16, proposal N(0, I). With one MALA step size in x it was
    # tuned to the narrowest coordinates and never spread the walkers along the widest: log Ẑ
    # came out 0.23 nats low on average, beyond 4 standard errors on some seeds, with an ESS
    # that raised no warning. Over 8 seeds the mean of (log Ẑ − log Z)/stderr is N(0, 1/8) if
    # the errors are calibrated: checked at 4.5/√8 (false alarm 6.8e-6); it was about −2.3.
    dim = 16
    scales = jnp.exp(jnp.linspace(jnp.log(0.1), jnp.log(3.0), dim))
    log_z = 0.5 * dim * math.log(2 * math.pi) + float(jnp.sum(jnp.log(scales)))

    def potential_fn(x):
        return 0.5 * jnp.sum((x / scales) ** 2)

    proposal = Normal(jnp.zeros(dim), 1.0)
    z_scores = [
        (estimate.log_normalizer - log_z) / estimate.stderr
        for estimate in (
            annealed_log_normalizer(jax.random.key(seed), potential_fn, proposal, 1000)
            for seed in range(8)
        )
    ]
    assert abs(np.mean(z_scores)) < 4.5 / math.sqrt(8), z_scores


def test_annealed_with_one_temperature_is_importance_sampling():
    # K = 1: the AIS weight is ℓ(x₀) = −U(x₀) − log q(x₀), x₀ ~ q, i.e. plain IS on AIS's
    # initial key. Tolerance: float32 rounding of log q computed by two code paths.
    _, _, potential_fn, _ = gaussian_oracle(2, seed=0)
    proposal = Normal(jnp.zeros(2), 2.0 * jnp.ones(2))
    key = jax.random.key(16)
    annealed = annealed_log_normalizer(key, potential_fn, proposal, 512, num_temperatures=1)
    importance = importance_log_normalizer(jax.random.split(key)[0], potential_fn, proposal, 512)
    np.testing.assert_allclose(annealed[:3], importance[:3], rtol=1e-5)


def test_annealed_with_fixed_step_size_recovers_gaussian():
    # A fixed step size (only the standardisation adapts, from the walkers' spread).
    mean, covariance, potential_fn, log_z = gaussian_oracle(2, seed=0)
    proposal = imperfect_gaussian_proposal(mean, covariance, scale_factor=1.5, shift=0.3)
    estimate = annealed_log_normalizer(
        jax.random.key(17),
        potential_fn,
        proposal,
        1000,
        num_temperatures=20,
        step_size=0.2,
        adapt_step_size=False,
    )
    assert estimate.reason.endswith("final step size 0.2")
    assert_within_stderr(estimate, log_z)


# --- Fallback to AIS: controls that must be caught ----------------------------------------------


@pytest.mark.parametrize("case", ["far_too_narrow", "one_mode_with_thin_tail"])
def test_log_normalizer_switches_to_annealed_on_poor_proposal(case):
    if case == "far_too_narrow":
        mean, covariance, potential_fn, log_z = gaussian_oracle(16, seed=1)
        proposal = imperfect_gaussian_proposal(mean, covariance, scale_factor=0.3, shift=0.0)
    else:
        # d = 8, modes at x₀ = ±3: q is centred on the 0.7 mode, reaches the 0.3 mode only in
        # its x₀ tail (2.4 sd away) and is 0.45× too narrow in the other coordinates.
        dim = 8
        potential_fn, log_z = mixture_potential(dim, separation=6.0), MIXTURE_LOG_Z
        proposal = Normal(jnp.zeros(dim).at[0].set(3.0), jnp.full(dim, 0.45).at[0].set(2.5))
    importance = importance_log_normalizer(jax.random.key(6), potential_fn, proposal, 2000)
    assert importance.ess / importance.num_samples < 0.05, importance
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate = log_normalizer(
            jax.random.key(6), potential_fn, proposal, 2000, num_temperatures=50
        )
    assert estimate.method == "annealed" and "ESS" in estimate.reason, estimate
    warned = [w for w in caught if "unreliable" in str(w.message)]
    assert len(warned) <= 1
    if warned:
        assert "ESS" in str(warned[0].message)
    else:
        assert_within_stderr(estimate, log_z)


def test_log_normalizer_keeps_importance_on_good_proposal():
    mean, covariance, potential_fn, log_z = gaussian_oracle(2, seed=0)
    proposal = imperfect_gaussian_proposal(mean, covariance, scale_factor=1.5, shift=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate = log_normalizer(jax.random.key(7), potential_fn, proposal, 4000)
    assert estimate.method == "importance" and "ESS" in estimate.reason
    assert_within_stderr(estimate, log_z)


def test_missing_mode_is_not_detected_by_ess():
    # Documented limitation: q never reaches the 0.3 mode, the weights are even and log Ẑ is
    # log Z + log 0.7 with a small stderr; no ESS-based check can see the missing mass.
    potential_fn = mixture_potential(2, separation=12.0)
    proposal = Normal(jnp.array([6.0, 0.0]), jnp.array([1.2, 1.2]))
    estimate = log_normalizer(jax.random.key(8), potential_fn, proposal, 2000)
    assert estimate.method == "importance"
    missing = MIXTURE_LOG_Z + math.log(MIXTURE_WEIGHTS[1])
    assert abs(estimate.log_normalizer - missing) < NUM_STDERR * estimate.stderr


def test_all_zero_weights_warn_and_give_minus_infinity():
    proposal = Normal(jnp.zeros(2))
    with pytest.warns(UserWarning, match="unreliable.*ESS 0.0"):
        estimate = log_normalizer(
            jax.random.key(9), lambda x: jnp.nan * x[0], proposal, 16, num_temperatures=3
        )
    assert estimate.log_normalizer == -math.inf and estimate.ess == 0.0
    assert estimate.stderr == math.inf


# --- Contracts ---------------------------------------------------------------------------------


def test_raw_and_typed_keys_and_same_key_same_result():
    _, _, potential_fn, _ = gaussian_oracle(2, seed=0)
    proposal = Normal(jnp.zeros(2), 2.0 * jnp.ones(2))
    for run in (
        lambda key: importance_log_normalizer(key, potential_fn, proposal, 256),
        lambda key: annealed_log_normalizer(key, potential_fn, proposal, 64, num_temperatures=5),
    ):
        typed = run(jax.random.key(10))
        assert run(jax.random.PRNGKey(10)) == typed
        assert run(jax.random.key(10)) == typed
        assert run(jax.random.key(11)) != typed


def test_nan_energy_regions_give_zero_weight_not_nan():
    # U = ½|x|² on the half-plane x₀ < 0 and NaN elsewhere: Z = π.
    def potential_fn(x):
        return jnp.where(x[0] < 0, 0.5 * x @ x, jnp.nan)

    proposal = Normal(jnp.array([-0.5, 0.0]), jnp.array([1.2, 1.2]))
    for estimate in (
        importance_log_normalizer(jax.random.key(12), potential_fn, proposal, 4000),
        annealed_log_normalizer(
            jax.random.key(12), potential_fn, proposal, 1000, num_temperatures=20
        ),
    ):
        assert all(math.isfinite(v) for v in estimate[:3]), estimate
        assert_within_stderr(estimate, math.log(math.pi))


def test_estimate_is_json_friendly():
    estimate = importance_log_normalizer(
        jax.random.key(13), lambda x: 0.5 * x @ x, Normal(jnp.zeros(3)), 32
    )
    assert isinstance(estimate, LogNormalizerEstimate)
    loaded = json.loads(json.dumps(estimate._asdict()))
    assert loaded == estimate._asdict()
    assert [type(v) for v in estimate] == [float, float, float, int, str, str]


def test_heldout_log_likelihood_matches_expected_log_density():
    dim = 16
    mean, covariance, potential_fn, log_z = gaussian_oracle(dim, seed=1)
    proposal = imperfect_gaussian_proposal(mean, covariance, scale_factor=1.2, shift=0.1)
    estimate = importance_log_normalizer(jax.random.key(14), potential_fn, proposal, 8000)
    data = np.random.default_rng(15).multivariate_normal(mean, covariance, size=4000)
    mean_log_lik, stderr = heldout_log_likelihood(potential_fn, data, estimate)
    # E log N(x; μ, Σ) = −log Z − d/2 under exact draws.
    expected = -log_z - 0.5 * dim
    assert stderr > estimate.stderr
    assert abs(mean_log_lik - expected) < NUM_STDERR * stderr, (mean_log_lik, expected, stderr)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 1}, ValueError, "num_samples"),
        ({"proposal": object()}, TypeError, "proposal"),
        ({"potential_fn": 3.0}, TypeError, "potential_fn"),
        ({"min_ess_fraction": 0.0}, ValueError, "min_ess_fraction"),
        ({"step_size": -1.0}, ValueError, "step_size"),
        ({"rng_key": 0}, TypeError, "PRNG key"),
    ],
)
def test_bad_inputs_raise(kwargs, error, match):
    arguments = {
        "rng_key": jax.random.key(0),
        "potential_fn": lambda x: 0.5 * x @ x,
        "proposal": Normal(jnp.zeros(2), 0.01 * jnp.ones(2)),  # forces the AIS branch
        "num_samples": 8,
        "num_temperatures": 2,
    } | kwargs
    with pytest.raises(error, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log_normalizer(**arguments)
