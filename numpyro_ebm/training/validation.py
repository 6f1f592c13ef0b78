"""Watching a run: held-out log-likelihood on the validation split, and mixing of the negatives.

At the end of every ``validate_every``-th epoch the trainer estimates log Z of the current
model by importance sampling from the objective's flow (the proposal [A]'s trainer keeps fitted
to the model; ρ for objectives without a flow) and records the validation points' mean
log-likelihood in the model's coordinates (:mod:`~numpyro_ebm.likelihood`). The history then
says which epoch was best and whether early stopping should end the run, so a resumed run
decides exactly as an uninterrupted one.

Persistent negatives are also checked for mixing each epoch: the rank-normalised R̂ of the
first walkers' paths over the epoch, in groups of 16 walkers (:func:`~numpyro_ebm.health.
ensemble_rhat`), and the mean global acceptance of flow moves.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flowjax.distributions import AbstractDistribution, Normal

from numpyro_ebm.datasets import Dataset
from numpyro_ebm.flow_base import importance_proposal
from numpyro_ebm.health import MIN_GLOBAL_ACCEPT_PROB, ensemble_rhat
from numpyro_ebm.likelihood import heldout_log_likelihood, importance_log_normalizer
from numpyro_ebm.metrics import zone_weights_from_energy, zone_weights_from_samples
from numpyro_ebm.preprocessing import Preprocessing

__all__ = ["best_epoch", "mixing_message", "model_mode_weights", "negatives_rhat"]
__all__ += ["epoch_extra", "should_stop", "trusted_validation", "untrusted_note", "validate"]

#: History key of the validation log-likelihood (mean nats per point, model coordinates).
VALIDATION_KEY = "val_log_likelihood"
#: R̂ of the negatives above which the trainer warns. Looser than a sampler's 1.01: the
#: target moves during an epoch, which R̂'s split halves see as non-stationarity; Gelman &
#: Rubin (1992)'s original 1.1 separates that drift from walkers stuck in their modes.
MAX_TRAINING_RHAT = 1.1
#: Fewest steps an epoch's R̂ is computed from: with 10 draws per walker (``--fast`` runs) the
#: split halves are too short and healthy runs scatter up to ~1.1.
MIN_RHAT_STEPS = 40
#: Smallest share of effective importance draws of a trusted validation (as
#: :func:`~numpyro_ebm.likelihood.log_normalizer`'s switch to AIS).
MIN_VALIDATION_ESS_FRACTION = 0.05


def validate(
    rng_key: jax.Array,
    potential_fn: Any,
    flow: AbstractDistribution | None,
    validation: jax.Array,
    *,
    base_scale: float,
    num_samples: int,
    log_det_jacobian: float = 0.0,
) -> dict[str, float]:
    """The validation points' mean log-likelihood under the model, by importance sampling.

    Args:
        rng_key: Key of the importance draws.
        potential_fn: The model's total energy of one point (a ``TiltedEnergy``).
        flow: The proposal; ``None`` uses ρ = N(0, σ² I).
        validation: Validation points ``(n, d)`` in the model's coordinates.
        base_scale: σ of ρ.
        num_samples: Importance draws.
        log_det_jacobian: ``log |det ∂z/∂x|`` of the map from the raw data to the model's
            coordinates (:attr:`~numpyro_ebm.preprocessing.Preprocessing.log_det_jacobian`),
            added so that the figure is in the raw data's units, as ``numpyro-ebm evaluate``'s.

    Returns:
        ``val_log_likelihood`` (nats per raw point) and its ``_stderr``,
        ``val_importance_ess`` and ``val_draws`` (the importance draws).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> metrics = validate(jax.random.key(0), lambda x: 0.5 * x @ x, None,
        ...                    jnp.zeros((4, 2)), base_scale=1.0, num_samples=100)
        >>> round(metrics["val_log_likelihood"], 4)  # -log 2π: ρ is the model itself
        -1.8379
    """
    dim = validation.shape[1]
    proposal = flow if flow is not None else Normal(jnp.zeros(dim), base_scale)
    estimate = importance_log_normalizer(rng_key, potential_fn, proposal, num_samples)
    mean, stderr = heldout_log_likelihood(potential_fn, validation, estimate)
    return {
        VALIDATION_KEY: mean + log_det_jacobian,
        f"{VALIDATION_KEY}_stderr": stderr,
        "val_importance_ess": estimate.ess,
        "val_draws": num_samples,
    }


def trusted_validation(entry: dict[str, Any]) -> float:
    """An epoch's validation log-likelihood, or -inf where its log Z estimate is not trusted.

    Below :data:`MIN_VALIDATION_ESS_FRACTION` effective draws a few importance weights
    dominate, log Ẑ comes out too low and the log-likelihood too high (a model drifting away
    from its proposal would look better and better): such a validation, or a non-finite one,
    never counts as the best and never as an improvement. Entries written before
    ``val_draws`` was recorded are taken as they are.

    Example:
        >>> trusted_validation({"val_log_likelihood": -2.0, "val_importance_ess": 3.0,
        ...                     "val_draws": 1024})
        -inf
    """
    value = entry[VALIDATION_KEY]
    draws = entry.get("val_draws")
    if draws and entry.get("val_importance_ess", draws) < MIN_VALIDATION_ESS_FRACTION * draws:
        return -math.inf
    return value if math.isfinite(value) else -math.inf


def untrusted_note(entry: dict[str, Any]) -> str:
    """What to print after a validation log-likelihood that is not trusted; ``""`` otherwise.

    Example:
        >>> untrusted_note({"val_log_likelihood": -14.7, "val_importance_ess": 3.9,
        ...                 "val_draws": 256})
        ' (untrusted: ESS 4 of 256 draws)'
    """
    if VALIDATION_KEY not in entry or trusted_validation(entry) > -math.inf:
        return ""
    return (
        f" (untrusted: ESS {entry.get('val_importance_ess', math.nan):.0f} of "
        f"{entry.get('val_draws', 0)} draws)"
    )


def _validations(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [
        (entry["epoch"], trusted_validation(entry)) for entry in history if VALIDATION_KEY in entry
    ]


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch with the highest trusted validation log-likelihood (the first, on ties).

    ``None`` without a trusted validation (:func:`trusted_validation`).

    Example:
        >>> best_epoch([{"epoch": 1, "val_log_likelihood": -2.0},
        ...             {"epoch": 2, "val_log_likelihood": -1.5}, {"epoch": 3}])
        2
    """
    validations = [item for item in _validations(history) if math.isfinite(item[1])]
    if not validations:
        return None
    return max(validations, key=lambda item: (item[1], -item[0]))[0]


def should_stop(history: list[dict[str, Any]], patience: int | None) -> bool:
    """Whether the last ``patience`` validations all failed to beat the best before them.

    An untrusted validation (:func:`trusted_validation`) counts as failing.

    Example:
        >>> history = [{"epoch": e, "val_log_likelihood": v} for e, v in enumerate([1, 3, 2, 2])]
        >>> should_stop(history, 2), should_stop(history, 3)
        (True, False)
    """
    if patience is None:
        return False
    validations = _validations(history)
    if len(validations) <= patience:
        return False
    best_before = max(value for _, value in validations[:-patience])
    return all(value <= best_before for _, value in validations[-patience:])


def negatives_rhat(paths: list[np.ndarray]) -> float | None:
    """R̂ of an epoch's traced negatives: chunks of ``(steps, walkers, d)`` paths.

    Returns:
        The largest ensemble R̂ over coordinates (groups of 16 walkers as chains), or ``None``
        with fewer than 32 walkers or :data:`MIN_RHAT_STEPS` steps.
    """
    if not paths:
        return None
    draws = np.swapaxes(np.concatenate(paths), 0, 1)  # (walkers, steps, d)
    if draws.shape[0] < 32 or draws.shape[1] < MIN_RHAT_STEPS or not np.all(np.isfinite(draws)):
        return None
    return float(ensemble_rhat(draws))


def mixing_message(entry: dict[str, Any], global_moves: bool = True) -> str | None:
    """What to tell the user when an epoch's negatives stopped mixing, else ``None``.

    Args:
        entry: An epoch's history entry.
        global_moves: Whether the sampler makes flow moves (whose acceptance is then checked
            after the first epoch).

    Example:
        >>> mixing_message({"epoch": 4, "negatives_rhat": 1.8})[:45]
        'epoch 4: the negatives are not mixing (R̂ 1.8'
        >>> "flowmc" in mixing_message({"epoch": 4, "negatives_rhat": 1.8}, global_moves=False)
        True
        >>> mixing_message({"epoch": 4, "negatives_rhat": 1.02, "global_accept_prob": 0.3})
    """
    problems = []
    rhat = entry.get("negatives_rhat")
    if rhat is not None and rhat > MAX_TRAINING_RHAT:
        problems.append(
            f"the negatives are not mixing (R̂ {rhat:.3g} > {MAX_TRAINING_RHAT} over groups of "
            "walkers)"
        )
    accept = entry.get("global_accept_prob")
    if (
        global_moves
        and accept is not None
        and entry["epoch"] > 1
        and accept < MIN_GLOBAL_ACCEPT_PROB
    ):
        problems.append(
            f"the flow's global moves are almost never accepted ({accept:.3g} < "
            f"{MIN_GLOBAL_ACCEPT_PROB})"
        )
    if not problems:
        return None
    remedy = (
        "More local steps per round (`num_local_steps`), more walkers, a larger flow or a "
        "smaller `learning_rate` usually help."
        if global_moves
        else "Local moves alone rarely cross between modes: flow-assisted negatives "
        '(`sampler="flowmc"`) move walkers between them; more steps or walkers, or a smaller '
        "`learning_rate`, help less."
    )
    return (
        f"epoch {entry['epoch']}: {'; '.join(problems)}. The negatives then miss modes and the "
        f"learned mode weights drift. {remedy}"
    )


def model_mode_weights(
    dataset: Dataset,
    total_energy_fn: Any,
    negatives: jax.Array | None,
    preprocessing: Preprocessing,
    grid_points: int,
) -> np.ndarray | None:
    """Model weight of each true mode (or class) of ``dataset``, ``(k,)``, or ``None``.

    In 2-D with known modes, ``exp(-E_θ) ρ`` is integrated on a grid over the dataset's
    bounds; in higher dimension the zones of the negatives are counted (METHOD.md §4,
    "Metrics"); for data whose modes are classes (``digits-2to1``) the negatives, mapped back
    to raw units, are classified by the dataset's classifier.

    Args:
        dataset: The dataset.
        total_energy_fn: The model's total energy of a batch (2-D grids).
        negatives: The objective's samples in the model's coordinates, or ``None``.
        preprocessing: The run's map from raw data to the model's coordinates.
        grid_points: Points per axis of a 2-D grid.

    Returns:
        The weights, or ``None`` when the dataset's modes are unknown or there is nothing to
        count.
    """
    if dataset.classify is not None and negatives is not None:
        labels = np.asarray(dataset.classify(preprocessing.inverse(np.asarray(negatives))))
        counts = np.bincount(labels, minlength=len(dataset.mode_weights))
        return counts / counts.sum()
    means = dataset.mode_means
    if means is None:
        return None
    if dataset.dim == 2:
        weights = zone_weights_from_energy(total_energy_fn, means, dataset.bounds, grid_points)
    elif negatives is None:
        return None
    else:
        weights = zone_weights_from_samples(negatives, means)
    return np.asarray(weights, dtype=float)


def epoch_extra(trainer: Any, state: Any, step: int, paths: list[np.ndarray]) -> dict[str, Any]:
    """What an epoch's history entry adds to its metric means (see ``Trainer.fit``).

    Args:
        trainer: The :class:`~numpyro_ebm.training.Trainer`.
        state: The state at the end of the epoch.
        step: Steps done.
        paths: The epoch's traced negatives (chunks of ``(steps, walkers, d)``).

    Returns:
        ``mode_weights`` (known modes), ``negatives_rhat`` (persistent negatives) and the
        validation's figures (every ``validate_every`` epochs, with validation data).
    """
    extra: dict[str, Any] = {}
    weights = trainer.mode_weights(state)
    if weights is not None:
        extra["mode_weights"] = [float(w) for w in weights]
    rhat = negatives_rhat(paths)
    if rhat is not None:
        extra["negatives_rhat"] = rhat
    config = trainer.config
    if (
        trainer.validation_data is not None
        and (step // config.steps_per_epoch) % (config.validate_every) == 0
    ):
        # One key for every epoch: the epochs' estimates share their base draws (common random
        # numbers), so the best epoch is picked by the model, not by its log Z's noise.
        extra |= validate(
            trainer.validation_key,
            trainer.tilted_energy(state),
            importance_proposal(
                trainer.energy(state), trainer.flow(state), trainer.base_scale, trainer.dim
            ),
            trainer.validation_data,
            base_scale=trainer.base_scale,
            num_samples=config.validation_samples,
            log_det_jacobian=trainer.preprocessing.log_det_jacobian,
        )
    return extra
