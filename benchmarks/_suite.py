"""The posteriors of ``benchmarks/posteriors.py``: posteriordb's real ones and synthetic ones.

Synthetic posteriors come with analytic reference moments; posteriordb's are compared with a long
NUTS run (``posteriors.py`` computes it). Every reference is a mean and a standard deviation per
scalar parameter of the *constrained* posterior, vector sites flattened as ``name[i]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _posteriordb_models import POSTERIORDB, model_kwargs


class Reference(NamedTuple):
    """Reference moments of every scalar parameter, in ``flatten_draws`` order."""

    names: tuple[str, ...]
    mean: np.ndarray
    sd: np.ndarray
    #: Where the moments come from: "analytic" or a description of the NUTS run.
    source: str
    #: Max R̂ of the reference run (NaN for analytic references).
    rhat: float = math.nan


class Posterior(NamedTuple):
    """One benchmark posterior."""

    name: str
    model: Callable
    model_kwargs: dict
    #: Analytic reference, or None to compute one with a long NUTS run.
    reference: Reference | None = None
    #: Draws (site -> array with chain and draw axes first) -> indicator of the top-right mode,
    #: for the two-mode targets whose metric includes |weight - 2/3|.
    mode_indicator: Callable[[dict], np.ndarray] | None = None
    #: Whether the NUTS reference run uses a dense mass matrix.
    dense_mass: bool = False


def flatten_draws(samples: dict) -> tuple[tuple[str, ...], np.ndarray]:
    """Names and draws of every scalar parameter: ``(chains, draws, parameters)``, sites sorted."""
    names, columns = [], []
    for site in sorted(samples):
        value = np.asarray(samples[site], dtype=float)
        flat = value.reshape(value.shape[0], value.shape[1], -1)
        if value.ndim == 2:
            names.append(site)
        else:
            names.extend(f"{site}[{i}]" for i in range(flat.shape[-1]))
        columns.append(flat)
    return tuple(names), np.concatenate(columns, axis=-1)


# -- Two-mode target of the README, moved and stretched --------------------------------------

#: Weight of the top-right mode N(+5·1, I) of the README's target; the other is N(-5·1, I).
WEIGHT_PLUS = 2.0 / 3.0
MODE_OFFSET = 5.0


def two_modes(loc: np.ndarray, scale: np.ndarray) -> None:
    """The README's 2:1 target in 2-D, mapped by ``x -> loc + scale * x`` coordinatewise."""
    component = dist.Normal(
        jnp.asarray(loc) + jnp.asarray(scale) * MODE_OFFSET * jnp.array([[-1.0], [1.0]]),
        jnp.asarray(scale),
    ).to_event(1)
    weights = jnp.array([1.0 - WEIGHT_PLUS, WEIGHT_PLUS])
    numpyro.sample("x", dist.MixtureSameFamily(dist.Categorical(weights), component))


def _two_modes_posterior(name: str, loc, scale) -> Posterior:
    loc, scale = np.asarray(loc, float), np.asarray(scale, float)
    # Mixture moments per coordinate: mean = m·(2w - 1), var = 1 + m² - mean² (unit components).
    mean = MODE_OFFSET * (2 * WEIGHT_PLUS - 1)
    sd = math.sqrt(1 + MODE_OFFSET**2 - mean**2)
    reference = Reference(("x[0]", "x[1]"), loc + scale * mean, scale * sd, "analytic")

    def mode_indicator(samples: dict) -> np.ndarray:
        standard = (np.asarray(samples["x"], float) - loc) / scale
        return (standard.sum(axis=-1) > 0).astype(float)

    kwargs = {"loc": loc, "scale": scale}
    return Posterior(name, two_modes, kwargs, reference, mode_indicator)


# -- Linear regression with an unstandardised predictor --------------------------------------

#: Data of the regression: n points, predictor ~ N(100, 10²) (mean 100 makes the intercept's
#: posterior sd ~100x the slope's and their correlation about -0.995), noise sd known.
REGRESSION = {"n": 100, "x_mean": 100.0, "x_sd": 10.0, "intercept": 10.0, "slope": 0.5}
REGRESSION_NOISE_SD = 5.0
#: Priors Normal(0, sd) of intercept and slope: weak, but proper so the posterior is Gaussian.
REGRESSION_PRIOR_SD = np.array([100.0, 10.0])


def regression(x: np.ndarray, y: np.ndarray) -> None:
    """Linear regression ``y ~ N(intercept + slope * x, 5)`` with known noise sd."""
    intercept = numpyro.sample("intercept", dist.Normal(0.0, REGRESSION_PRIOR_SD[0]))
    slope = numpyro.sample("slope", dist.Normal(0.0, REGRESSION_PRIOR_SD[1]))
    numpyro.sample("y", dist.Normal(intercept + slope * x, REGRESSION_NOISE_SD), obs=y)


def _regression_posterior(seed: int = 0) -> Posterior:
    rng = np.random.default_rng(seed)
    n = REGRESSION["n"]
    x = rng.normal(REGRESSION["x_mean"], REGRESSION["x_sd"], n)
    y = REGRESSION["intercept"] + REGRESSION["slope"] * x + rng.normal(0.0, REGRESSION_NOISE_SD, n)
    # Conjugate Gaussian posterior (zero prior means): precision = X'X/s² + diag(1/prior var).
    design = np.stack([np.ones(n), x], axis=1)
    precision = design.T @ design / REGRESSION_NOISE_SD**2 + np.diag(REGRESSION_PRIOR_SD**-2.0)
    covariance = np.linalg.inv(precision)
    mean = covariance @ (design.T @ y / REGRESSION_NOISE_SD**2)
    reference = Reference(("intercept", "slope"), mean, np.sqrt(np.diag(covariance)), "analytic")
    return Posterior("regression-unstandardised", regression, {"x": x, "y": y}, reference)


# -- Neal's funnel ------------------------------------------------------------------------------

#: Dimension of the funnel: v and FUNNEL_DIM - 1 coordinates x_i.
FUNNEL_DIM = 5
#: Scale of v ~ N(0, 3²) (Neal 2003, "Slice sampling", Ann. Statist. 31, §8).
FUNNEL_V_SD = 3.0


def funnel() -> None:
    """Neal's funnel, centred: ``v ~ N(0, 3²)``, ``x_i | v ~ N(0, e^v)`` (variance e^v)."""
    v = numpyro.sample("v", dist.Normal(0.0, FUNNEL_V_SD))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([FUNNEL_DIM - 1]))


def _funnel_posterior() -> Posterior:
    # E[x_i] = 0 and Var(x_i) = E[e^v] = exp(sd_v² / 2) (lognormal mean).
    x_sd = math.exp(FUNNEL_V_SD**2 / 4)
    names = ("v", *(f"x[{i}]" for i in range(FUNNEL_DIM - 1)))
    sd = np.array([FUNNEL_V_SD] + [x_sd] * (FUNNEL_DIM - 1))
    reference = Reference(names, np.zeros(FUNNEL_DIM), sd, "analytic")
    return Posterior(f"funnel-{FUNNEL_DIM}", funnel, {}, reference)


# -- The suite --------------------------------------------------------------------------------


def synthetic_posteriors() -> list[Posterior]:
    """The synthetic posteriors, each with analytic reference moments."""
    return [
        # The goal: any location up to 1e3 away and any scale from 1e-3 to 1e3.
        _two_modes_posterior("two-modes-shifted-1e3", [1e3, 0.0], [1.0, 1.0]),
        _two_modes_posterior("two-modes-scaled-1e-3-1e3", [0.0, 0.0], [1e-3, 1e3]),
        _regression_posterior(),
        _funnel_posterior(),
    ]


def suite_names() -> list[str]:
    """Names of every posterior of the suite, in run order."""
    return [*POSTERIORDB, *(posterior.name for posterior in synthetic_posteriors())]


def build_suite(directory: Path, names: list[str] | None = None) -> list[Posterior]:
    """The posteriors called ``names`` (all by default); data only read for those chosen."""
    names = suite_names() if names is None else names
    unknown = sorted(set(names) - set(suite_names()))
    if unknown:
        raise ValueError(f"Unknown posteriors {unknown}; choose from {suite_names()}.")
    real = [
        Posterior(name, spec.model, model_kwargs(directory, name), dense_mass=spec.dense_mass)
        for name, spec in POSTERIORDB.items()
        if name in names
    ]
    synthetic = [posterior for posterior in synthetic_posteriors() if posterior.name in names]
    return real + synthetic
