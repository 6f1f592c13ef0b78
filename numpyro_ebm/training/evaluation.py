"""Metrics of a trained EBM, as in [A] (METHOD.md §4, "Metrics").

- 2-D with known modes: zone weights of the model by integrating ``exp(-E_θ) ρ`` on a grid,
  their mean squared error, and the top-right mode's weight (the heavy mode of
  ``two-modes-2to1``).
- 2-D with a known density: the median squared log-density error on the grid.
- Known modes, any dimension: zone weights of the final negatives (objectives that keep
  samples); for ``d > 2`` also of a :class:`~numpyro_ebm.FlowMCKernel` run on the trained
  model, started from the negatives or, without them, from ρ.
- Data with a test split (the real built-ins): the test points' log-likelihood in raw units,
  log Z with its standard error and the importance ESS (:mod:`~numpyro_ebm.training.heldout`),
  each under a ``test_`` prefix.
- Mixing of the negatives (objectives with persistent chains, ``pcd``): the chains continue
  with the energy frozen, and the max R̂ / min bulk ESS are taken across its walkers as
  independent chains. Other objectives' samples restart at every step, so their R̂ says
  nothing about the method and is not reported.
- The training history's entry of the evaluated state's epoch, each metric under a ``final_``
  prefix, and that ``epoch``: the last one, or the best validation's when the state evaluated
  is the one early stopping kept (``result.best_state``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from numpyro_ebm._warnings import warn_user
from numpyro_ebm.metrics import (
    median_squared_log_density_error,
    mixing_diagnostics,
    zone_weight_mse,
    zone_weights_from_samples,
)
from numpyro_ebm.training.heldout import heldout_metrics
from numpyro_ebm.training.sampling import sample_energy
from numpyro_ebm.training.trainer import TrainResult
from numpyro_ebm.training.validation import (
    MAX_TRAINING_RHAT,
    VALIDATION_KEY,
    trusted_validation,
)

__all__ = ["evaluate"]


def _round(values: Any) -> Any:
    return [float(v) for v in np.asarray(values).ravel()]


def evaluate(
    result: TrainResult,
    *,
    num_chain_steps: int = 200,
    num_flowmc_samples: int = 200,
    seed: int = 0,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Compute the report's metrics for a trained model.

    It evaluates ``result.state``, the last one. ``numpyro-ebm train`` evaluates (and saves)
    the best validation's state where a run has one: ``result._replace(state=result.best_state)``
    gives the same figures from Python.

    Args:
        result: A training result.
        num_chain_steps: Steps of the continued negatives used for R̂ / ESS (the first 64
            walkers are the chains; see :meth:`~numpyro_ebm.training.Trainer.negative_chains`).
        num_flowmc_samples: Draws per chain of the FlowMC run on the model (``d > 2`` with
            known modes only).
        seed: Seed of the FlowMC run.
        progress_bar: Show a bar over the evaluation's four stages (mode weights, density
            error, test likelihood, mixing of the negatives).

    Returns:
        A JSON-serialisable dict of metrics (see the module's docstring); keys that do not
        apply to the dataset are absent.
    """
    trainer, state = result.trainer, result.state
    dataset, dim = trainer.dataset, trainer.dim
    start = time.perf_counter()
    metrics: dict[str, Any] = {"dim": dim, "steps": int(state.step)}
    objective = trainer.objective
    negatives = trainer.negatives(state)
    negatives = None if negatives is None else np.asarray(negatives)
    total_energy = trainer.total_energy_fn(state)
    means, true_weights = dataset.mode_means, dataset.mode_weights
    bar = tqdm(total=4, desc="evaluation: mode weights", disable=not progress_bar)

    if means is not None:
        metrics["true_mode_weights"] = _round(true_weights)
        if negatives is not None:
            weights = zone_weights_from_samples(negatives, means)
            metrics["negatives_mode_weights"] = _round(weights)
            metrics["negatives_zone_weight_mse"] = zone_weight_mse(weights, true_weights)
        if dim == 2:
            weights = trainer.mode_weights(state)
            metrics["mode_weights"] = _round(weights)
            metrics["zone_weight_mse"] = zone_weight_mse(weights, true_weights)
            top_right = int(np.argmax(np.sum(means, axis=1)))
            metrics["top_right_weight"] = float(weights[top_right])
            metrics["true_top_right_weight"] = float(true_weights[top_right])
        else:
            key_sample, key_init = jax.random.split(jax.random.key(seed))
            num_chains = 256 if negatives is None else min(len(negatives), 256)
            if negatives is None:
                init_positions = trainer.base_scale * jax.random.normal(key_init, (num_chains, dim))
            else:
                init_positions = negatives
            mcmc = sample_energy(
                key_sample,
                trainer.energy(state),
                dim,
                trainer.base_scale,
                num_samples=num_flowmc_samples,
                num_chains=num_chains,
                num_warmup=num_flowmc_samples,
                flow=trainer.flow(state),
                init_positions=init_positions,
                num_particles=getattr(trainer.config.objective, "num_particles", 32),
            )
            draws = np.asarray(mcmc.get_samples()["x"])
            weights = zone_weights_from_samples(draws, means)
            metrics["mode_weights"] = _round(weights)
            metrics["zone_weight_mse"] = zone_weight_mse(weights, true_weights)
    bar.update()
    bar.set_description("evaluation: density error")
    if dim == 2 and dataset.log_prob is not None:
        metrics["median_sq_log_density_error"] = median_squared_log_density_error(
            total_energy, dataset.log_prob, dataset.bounds, trainer.config.grid_points
        )

    bar.update()
    bar.set_description("evaluation: test likelihood")
    if dataset.test_data is not None:
        test = heldout_metrics(
            jax.random.key(seed),
            trainer.energy(state),
            trainer.base_scale,
            trainer.flow(state),
            trainer.preprocessing,
            dataset.test_data,
            num_samples=trainer.config.validation_samples,
        )
        metrics.update({f"test_{name}": value for name, value in test.items()})
    bar.update()
    bar.set_description("evaluation: mixing of the negatives")
    if objective.persistent:
        metrics.update(_mixing_metrics(trainer.negative_chains(state, num_chain_steps)))
        _warn_if_walkers_stuck(metrics["negatives_max_rhat"], trainer.config.objective.sampler)
    bar.update()
    bar.close()
    last = _history_entry(result.history, int(state.step))
    if "epoch" in last:
        metrics["epoch"] = last["epoch"]
    skipped = {"epoch", "step", "mode_weights", "time_s"}
    for name, value in last.items():
        if name not in skipped:
            metrics[f"final_{name}"] = value
    if VALIDATION_KEY in last:  # an untrusted figure is too high, and chose nothing
        metrics["final_val_trusted"] = trusted_validation(last) > -math.inf
    metrics["evaluation_s"] = time.perf_counter() - start
    return metrics


def _history_entry(history: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """The history's entry of the state at ``step``; the last one if none is (or empty)."""
    at_step = [entry for entry in history if entry.get("step") == step]
    return at_step[-1] if at_step else (history[-1] if history else {})


def _warn_if_walkers_stuck(max_rhat: float, sampler: str) -> None:
    """Warn when the negative sampler's walkers, each one chain, do not mix on the final model.

    Walkers that never leave their modes keep the R̂ over groups of walkers that training
    checks each epoch near 1.03, under its 1.1; taken walker by walker it is 1.3-2.0 (MALA and
    ULA on three unequal modes, 512 walkers), against at most 1.01 for flow-assisted and
    neural-transport negatives.
    """
    if max_rhat > MAX_TRAINING_RHAT:
        warn_user(
            f"the {sampler!r} negative sampler's walkers do not mix on the trained model "
            f"(R̂ {max_rhat:.3g} > {MAX_TRAINING_RHAT} with each walker a chain): during "
            "training its negatives stayed in the modes where they were, so the learned mode "
            'weights may be off. Flow-assisted negatives (sampler="flowmc") move walkers '
            "between modes.",
            RuntimeWarning,
        )


def _mixing_metrics(chains: np.ndarray) -> dict[str, Any]:
    """Max R̂ / min bulk ESS across chains ``(num_chains, num_draws, dim)``; NaN if not finite."""
    if np.all(np.isfinite(chains)):
        metrics = {f"negatives_{k}": v for k, v in mixing_diagnostics(chains).items()}
    else:
        metrics = {"negatives_max_rhat": float("nan"), "negatives_min_ess_bulk": float("nan")}
    metrics["negatives_num_chains"] = int(chains.shape[0])
    metrics["negatives_num_draws"] = int(chains.shape[1])
    return metrics
