"""Held-out log-likelihood of a trained model in the units of the user's raw data.

A run's model is a density on standardised coordinates ``z`` (its
:class:`~numpyro_ebm.preprocessing.Preprocessing`). :func:`heldout_metrics` estimates log Z of
the tilted EBM with the run's flow as proposal (:func:`~numpyro_ebm.likelihood.log_normalizer`:
importance sampling, annealed importance sampling when its ESS is low), maps raw held-out
points to ``z`` (dequantising integer data with fresh noise) and reports the mean
log-likelihood per point in raw units (the Jacobian of the preprocessing added) and in the
model's coordinates, with standard errors and bits per dimension. ``numpyro-ebm evaluate`` and
the training report use it; :func:`evaluate_run` scores a saved run's model, as
``numpyro-ebm evaluate`` does.
"""

from __future__ import annotations

import math
import os
from typing import Any

import equinox as eqx
import jax
import numpy as np
from flowjax.distributions import AbstractDistribution

from numpyro_ebm._checks import positive_int, seed_value, typed_key
from numpyro_ebm._warnings import warn_user
from numpyro_ebm.energies import TiltedEnergy
from numpyro_ebm.flow_base import importance_proposal
from numpyro_ebm.likelihood import LogNormalizerEstimate, log_normalizer
from numpyro_ebm.likelihood.importance import mean_log_likelihood, unnormalized_log_densities
from numpyro_ebm.preprocessing import Preprocessing

__all__ = ["EXACT_TEST_POINTS", "evaluate_run", "heldout_metrics"]

#: Exact draws that :func:`evaluate_run` scores for a built-in with a known density.
EXACT_TEST_POINTS = 2000


def _warn_of_zero_density(log_model: np.ndarray, shown: int = 5) -> None:
    """Warn, naming the rows, where the model gives points zero density (energy inf or NaN).

    One such point makes the mean log-likelihood −inf (``null`` in JSON): typically an outlier
    far outside the training data, where the energy overflows.
    """
    rows = np.flatnonzero(~np.isfinite(log_model))
    if rows.size:
        warn_user(
            f"the model gives {rows.size} of {log_model.size} held-out points zero density "
            f"(energy inf or NaN), so the held-out log-likelihood is -inf: rows "
            f"{rows[:shown].tolist()}{' ...' if rows.size > shown else ''}; outliers far "
            "outside the training data?"
        )


def _kl_divergence(
    log_p: np.ndarray, unnormalized_log_model: np.ndarray, estimate: LogNormalizerEstimate
) -> tuple[float, float]:
    """KL(p ‖ model) from exact draws of p, and its standard error.

    The mean of log p(x) − log model(x) over the draws, with log model = −U − log Ẑ. The
    standard error pairs the two densities point by point (their difference varies far less
    than either) and adds log Ẑ's in quadrature; infinite where the model has zero density.

    Example:
        >>> exact = LogNormalizerEstimate(1.0, 0.1, 100.0, 100, "importance", "")
        >>> _kl_divergence(np.array([-1.0, -2.0]), np.array([-0.5, -1.5]), exact)
        (0.5, 0.1)
    """
    gaps = log_p - unnormalized_log_model + estimate.log_normalizer
    kl = float(np.mean(gaps))
    if not math.isfinite(kl):
        return kl, math.inf
    return kl, math.sqrt(float(np.var(gaps, ddof=1)) / len(gaps) + estimate.stderr**2)


def heldout_metrics(
    rng_key: jax.Array,
    energy: Any,
    base_scale: float,
    flow: AbstractDistribution | None,
    preprocessing: Preprocessing,
    raw_points: np.ndarray,
    *,
    num_samples: int = 16_384,
    exact_log_density: np.ndarray | None = None,
) -> dict[str, Any]:
    """Held-out log-likelihood of raw points under a trained tilted EBM, with log Z.

    Args:
        rng_key: Key of the importance draws and the dequantisation noise (typed or raw).
        energy: The energy module ``E_θ`` (one point ``(d,)`` to a scalar).
        base_scale: σ of the tilt ρ.
        flow: The run's flow, the proposal unless the energy has its own base flow
            (:func:`~numpyro_ebm.flow_base.importance_proposal`); ``None``: ρ.
        preprocessing: The run's map from raw data to the model's coordinates.
        raw_points: Held-out points ``(n, d)`` in raw units.
        num_samples: Importance draws (and AIS walkers when it falls back).
        exact_log_density: Where the points are exact draws of a known density p: their
            log p in raw units, ``(n,)``. Adds ``exact_log_likelihood``, and
            ``kl_divergence`` (KL(p ‖ model)) with its standard error.

    Returns:
        A JSON-ready dict: ``log_normalizer``, ``log_normalizer_stderr``, ``importance_ess``,
        ``method`` (``"importance"`` or ``"annealed"``) and ``reason``;
        ``heldout_log_likelihood`` and ``heldout_log_likelihood_stderr`` (mean nats per point,
        raw units), the same ``..._standardized`` (model coordinates), ``bits_per_dim`` (raw
        units), ``num_points``, ``dequantized``; with ``exact_log_density`` also
        ``exact_log_likelihood``, ``kl_divergence`` and ``kl_divergence_stderr``.

    Example:
        >>> import jax, numpy as np
        >>> zero = lambda x: 0.0 * x.sum()  # E ≡ 0: the model is ρ = N(0, I)
        >>> metrics = heldout_metrics(jax.random.key(0), zero, 1.0, None,
        ...                           Preprocessing.identity(2), np.zeros((3, 2)),
        ...                           num_samples=100)
        >>> round(metrics["heldout_log_likelihood"], 4), round(metrics["log_normalizer"], 4)
        (-1.8379, 0.0)
    """
    positive_int("num_samples", num_samples, 2)
    points = np.asarray(raw_points)
    if points.ndim != 2 or points.shape[1] != preprocessing.dim or len(points) == 0:
        raise ValueError(
            f"expected held-out points of shape (n, {preprocessing.dim}) with n >= 1, got "
            f"shape {points.shape}"
        )
    key_normalizer, key_noise = jax.random.split(typed_key(rng_key))
    tilted = TiltedEnergy(energy, base_scale)
    proposal = importance_proposal(energy, flow, base_scale, preprocessing.dim)
    estimate = log_normalizer(key_normalizer, tilted, proposal, num_samples)
    z = preprocessing.transform(points, key_noise)
    log_density = unnormalized_log_densities(tilted, z)
    mean, stderr = mean_log_likelihood(log_density, estimate)
    raw_mean = mean + preprocessing.log_det_jacobian
    # + log Ẑ: the model's unnormalised log-density at each point, in raw units.
    log_model = log_density + preprocessing.log_det_jacobian
    _warn_of_zero_density(log_model)
    exact = {}
    if exact_log_density is not None:
        log_p = np.asarray(exact_log_density, dtype=float).reshape(len(points))
        kl, kl_stderr = _kl_divergence(log_p, log_model, estimate)
        exact = {
            "exact_log_likelihood": float(np.mean(log_p)),
            "kl_divergence": kl,
            "kl_divergence_stderr": kl_stderr,
        }
    return {
        "log_normalizer": estimate.log_normalizer,
        "log_normalizer_stderr": estimate.stderr,
        "importance_ess": estimate.ess,
        "num_importance_samples": estimate.num_samples,
        "method": estimate.method,
        "reason": estimate.reason,
        "heldout_log_likelihood": raw_mean,
        "heldout_log_likelihood_stderr": stderr,
        "heldout_log_likelihood_standardized": mean,
        "heldout_log_likelihood_standardized_stderr": stderr,
        "bits_per_dim": -raw_mean / (preprocessing.dim * math.log(2)),
        "num_points": len(points),
        "dequantized": preprocessing.dequantize,
        **exact,
    }


def evaluate_run(
    run_dir: str | os.PathLike,
    data: str,
    *,
    num_samples: int = 16_384,
    seed: int = 0,
    energy: eqx.Module | None = None,
) -> dict[str, Any]:
    """Held-out log-likelihood of a saved run's model on data, as ``numpyro-ebm evaluate``.

    Args:
        run_dir: Directory of a trained run (its ``model.json`` and ``model.eqx``).
        data: What to score: a dataset name or a ``.npy``/``.csv`` file. A real dataset's
            test split (its points if it has none); for a built-in with a known density,
            :data:`EXACT_TEST_POINTS` fresh exact draws, which adds their exact
            log-likelihood and KL(p ‖ model) with its standard error.
        num_samples: Importance draws of log Z (and AIS walkers when it falls back).
        seed: Seed of the importance draws (and ``seed + 1`` of the exact draws).
        energy: A template of the run's energy network if it is one of your own (see
            :func:`~numpyro_ebm.training.load_model`).

    Returns:
        The metrics of :func:`heldout_metrics`, in the raw data's units.
    """
    from numpyro_ebm.datasets import get_dataset
    from numpyro_ebm.training.model_io import load_model, saved_preprocessing

    seed = seed_value("seed", seed)
    model = load_model(run_dir, energy)
    dataset = get_dataset(data)
    exact_log_density = None
    if dataset.is_builtin:  # a known density: fresh exact draws, scored against it too
        points = np.asarray(dataset.sample(jax.random.key(seed + 1), EXACT_TEST_POINTS))
        exact_log_density = np.asarray(dataset.log_prob(points))
    else:
        points = dataset.data if dataset.test_data is None else dataset.test_data
    return heldout_metrics(
        jax.random.key(seed),
        model.energy,
        model.base_scale,
        model.flow,
        saved_preprocessing(model.settings),
        points,
        num_samples=num_samples,
        exact_log_density=exact_log_density,
    )
