"""Real data: EBMs against flowjax flows on held-out log-likelihood, 2:1 class weights, OOD.

One run, everything side by side on the same splits (the trainer's: ``get_dataset`` splits,
preprocessing fitted on the training split, dequantised digits):

- **Held-out log-likelihood** (mean nats per test example, raw units) on digits,
  breast-cancer and wine of: a full-covariance Gaussian; flowjax coupling-spline and
  masked-autoregressive-spline flows (``_flow_baselines.py``, each with ``--flow-seconds``);
  the EBM of the CLI defaults (``pcd`` with flowmc negatives, MLP energy on ρ = N(0, σ²I)); and
  the EBM on a flow base (:class:`~numpyro_ebm.flow_base.FlowBaseEnergy`: a correction of the
  best-validating flow, the MAF, whose sampler proposes from the coupling flow, which samples
  in one pass), whose per-example difference to its base is reported with its standard error
  (paired: the same test points; log Ẑ's error added). Goal: the EBM ≥ the best flow, within
  3 × the flows' budget (the EBM's time includes fitting both flows).
- **digits-2to1**: the weight of digit 0 in the model of EBMs on a flow base trained with
  flowmc and with ula negatives (classifier on raw pixels; self-normalised importance sampling
  from the base flow), and its share among their negatives. Goal: flowmc within 0.02 of 2/3.
- **log Z** of energies with a known normalising constant (mixtures and correlated Gaussians,
  d = 2…64, shifted by 10 per coordinate) from the flow ``FlowMCKernel`` fitted
  (``_log_z.py``). Goal: within 3 standard errors, standard error ≤ 0.05.
- **OOD**: AUROC of the energies of digits' test images against pixel-shuffled, flipped,
  Gaussian-noise and uniform images, and against image patches.

Run::

    .venv/bin/python benchmarks/real_data.py                    # everything (~45 min, 2 CPUs)
    .venv/bin/python benchmarks/real_data.py --datasets wine --epochs 2   # a quick look
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _flow_baselines import (
    FLOW_KINDS,
    fit_flow_baseline,
    gaussian_heldout_log_likelihood,
    heldout_log_likelihood_of_flow,
)
from _log_z import GAUSSIAN_DIMS, MIXTURES, log_z_rows

from numpyro_ebm.datasets import get_dataset
from numpyro_ebm.energies import MLPEnergy
from numpyro_ebm.flow_base import FlowBaseEnergy
from numpyro_ebm.ood import ood_aurocs
from numpyro_ebm.training import TrainConfig, Trainer
from numpyro_ebm.training.heldout import heldout_metrics

DATASETS = ("digits", "breast-cancer", "wine")
#: Steps per epoch of every EBM run here; validation (and the best checkpoint) every epoch.
STEPS_PER_EPOCH = 100
#: The flow an EBM on a flow base proposes from (cheap to sample both ways); its base q₀ is the
#: best-validating flow (MAF on every dataset here), which samples one coordinate at a time.
PROPOSAL_FLOW = "coupling-spline"
#: Validation of an EBM on a MAF base: each log Z draws from q₀ (digits: ~3 s per 1024 draws).
FLOW_BASE_VALIDATION = dict(validation_samples=1024, validate_every=2)
#: Draws of q₀ that weigh the classes of digits-2to1's models.
NUM_WEIGHT_DRAWS = 8192
#: Importance draws of each log Z estimate of a test figure.
NUM_IMPORTANCE = 16_384


def _config(dim: int, epochs: int, **changes) -> TrainConfig:
    return TrainConfig.for_dimension(dim).with_settings(
        num_epochs=epochs, steps_per_epoch=STEPS_PER_EPOCH, **changes
    )


def _fit_ebm(dataset, config, energy=None):
    start = time.perf_counter()
    result = Trainer(dataset, config, energy=energy).fit(progress_bar=False)
    state = result.best_state if result.best_state is not None else result.state
    return result.trainer, state, time.perf_counter() - start, result.history


def _ebm_test(trainer, state, test_raw, key):
    return heldout_metrics(
        key,
        trainer.energy(state),
        trainer.base_scale,
        trainer.flow(state),
        trainer.preprocessing,
        test_raw,
        num_samples=NUM_IMPORTANCE,
    )


def _paired_gain(trainer, state, base_flow, test_z, metrics) -> tuple[float, float]:
    """Mean per-example log-likelihood gain of the EBM over its base flow, and its stderr."""
    tilted = jax.vmap(trainer.tilted_energy(state))
    ebm_log_prob = -np.asarray(tilted(test_z)) - metrics["log_normalizer"]
    gain = ebm_log_prob - np.asarray(jax.vmap(base_flow.log_prob)(test_z))
    stderr = math.sqrt(gain.var(ddof=1) / len(gain) + metrics["log_normalizer_stderr"] ** 2)
    return float(gain.mean()), stderr


def _fit_flows(train_z, valid_z, key, flow_seconds: float) -> dict:
    """Both flowjax baselines fitted on the same split, by kind."""
    return {
        kind: fit_flow_baseline(
            kind, np.asarray(train_z), np.asarray(valid_z), rng_key=key, max_seconds=flow_seconds
        )
        for kind in FLOW_KINDS
    }


def _flow_base_energy(dim: int, fits: dict, base_scale: float, key) -> FlowBaseEnergy:
    """An MLP correction of the best-validating flow, proposing from the coupling flow."""
    best = min(fits, key=lambda kind: fits[kind].best_validation_nll)
    proposal = None if best == PROPOSAL_FLOW else fits[PROPOSAL_FLOW].flow
    correction = MLPEnergy(dim, width=128, depth=3, key=key)
    return FlowBaseEnergy(correction, fits[best].flow, base_scale, proposal_flow=proposal)


def likelihood_rows(name: str, epochs: int, flow_seconds: float, seed: int) -> list[str]:
    """The held-out log-likelihood table's rows of one dataset."""
    dataset = get_dataset(name)
    config = _config(dataset.dim, epochs, patience=5)
    probe = Trainer(dataset, config)  # the splits and preprocessing every model here shares
    prep, train_z, valid_z = probe.preprocessing, probe.data, probe.validation_data
    key_test, key_fit, key_ebm, key_base = jax.random.split(jax.random.key(seed), 4)
    test_z = prep.transform(dataset.test_data, key_test)
    rows = []

    def row(model, ll, stderr, seconds, note=""):
        rows.append(f"| {name} | {model} | {ll:.2f} | {stderr:.2f} | {seconds} | {note} |")
        print(rows[-1], flush=True)

    gaussian = gaussian_heldout_log_likelihood(np.asarray(train_z), test_z, prep)
    row("Gaussian (full covariance)", gaussian.raw, gaussian.stderr, "–")
    fits = _fit_flows(train_z, valid_z, key_fit, flow_seconds)
    for kind, fit in fits.items():
        heldout = heldout_log_likelihood_of_flow(fit.flow, test_z, prep)
        row(f"flowjax {kind}", heldout.raw, heldout.stderr, f"{fit.wall_seconds:.0f}",
            f"stopped by {fit.stopped_by}")  # fmt: skip

    trainer, state, seconds, _ = _fit_ebm(dataset, config)
    metrics = _ebm_test(trainer, state, dataset.test_data, key_ebm)
    row("EBM, MLP on ρ (pcd flowmc)", metrics["heldout_log_likelihood"],
        metrics["heldout_log_likelihood_stderr"], f"{seconds:.0f}",
        f"log Z by {metrics['method']}, ESS {metrics['importance_ess']:.0f}")  # fmt: skip

    energy = _flow_base_energy(dataset.dim, fits, trainer.base_scale, key_base)
    base_config = config.with_settings(base_scale=trainer.base_scale, **FLOW_BASE_VALIDATION)
    trainer, state, seconds, _ = _fit_ebm(dataset, base_config, energy)
    metrics = _ebm_test(trainer, state, dataset.test_data, key_ebm)
    gain, gain_stderr = _paired_gain(trainer, state, energy.base_flow, test_z, metrics)
    # Everything the EBM needs: both flows (its base and its sampler's proposal) and training.
    total = seconds + sum(fit.wall_seconds for fit in fits.values())
    budget = 3 * flow_seconds
    base_kind = next(kind for kind, fit in fits.items() if fit.flow is energy.base_flow)
    row(f"EBM on the {base_kind} flow", metrics["heldout_log_likelihood"],
        metrics["heldout_log_likelihood_stderr"], f"{total:.0f}",
        f"gain over its flow {gain:+.2f} ± {gain_stderr:.2f}; log Z ESS "
        f"{metrics['importance_ess']:.0f}; within 3× budget ({budget:.0f} s): "
        f"{total <= budget}")  # fmt: skip
    if name == "digits":
        ood_rows(dataset, prep, trainer, state)
    return rows


def ood_rows(dataset, prep, trainer, state) -> None:
    """AUROC of the EBM's energy: digits' test images against shifted images and patches."""
    patches = get_dataset("patches").test_data[: len(dataset.test_data)]
    total_energy = trainer.total_energy_fn(state)

    def raw_energy(x):
        return np.asarray(total_energy(prep.transform(x, jax.random.key(5))))

    aurocs = ood_aurocs(raw_energy, dataset.test_data, jax.random.key(6), image_shape=(8, 8),
                        others={"patches": patches})  # fmt: skip
    print("\nOOD AUROC of the digits EBM's energy (test digits vs each shift): "
          + ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items()))  # fmt: skip


def _self_normalised_share(log_weights: np.ndarray, indicator: np.ndarray) -> tuple[float, ...]:
    """Σ w f / Σ w of a 0/1 ``indicator``, its delta-method stderr [Owen §9.2] and the ESS."""
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    share = float(weights @ indicator)
    stderr = float(np.sqrt(weights**2 @ (indicator - share) ** 2))
    return share, stderr, float(1 / np.sum(weights**2))


def class_weight_rows(epochs: int, flow_seconds: float, seed: int) -> list[str]:
    """Weight of digit 0 in EBMs on a flow trained on digits-2to1 with flowmc and ula negatives.

    The model's weight is ``E_p[1(class 0)]``, self-normalised importance sampling from the
    base flow q₀ (weights ``exp(-c_θ)``), the classifier applied to raw pixels; the negatives'
    share (averaged over the second half of training) is what the sampler saw.
    """
    dataset = get_dataset("digits-2to1")
    config = _config(dataset.dim, epochs, seed=seed, **FLOW_BASE_VALIDATION)
    probe = Trainer(dataset, config)
    prep = probe.preprocessing
    key_fit, key_base, key_draws = jax.random.split(jax.random.key(seed + 1), 3)
    fits = _fit_flows(probe.data, probe.validation_data, key_fit, flow_seconds)
    energy = _flow_base_energy(dataset.dim, fits, probe.base_scale, key_base)
    draws = np.asarray(energy.base_flow.sample(key_draws, (NUM_WEIGHT_DRAWS,)))
    is_zero = (np.asarray(dataset.classify(prep.inverse(draws))) == 0).astype(float)
    rows = []

    def row(model, share, stderr, ess, negatives="–", seconds="–"):
        rows.append(f"| digits-2to1 | {model} | {share:.3f} ± {stderr:.3f} (ESS {ess:.0f}) | "
                    f"{share - 2 / 3:+.3f} | {negatives} | {seconds} |")  # fmt: skip
        print(rows[-1], flush=True)

    row("base flow q₀ alone", *_self_normalised_share(np.zeros(len(draws)), is_zero))
    base_config = config.with_settings(base_scale=probe.base_scale)
    for sampler in ("flowmc", "ula"):
        trainer, state, seconds, history = _fit_ebm(
            dataset, base_config.with_settings(sampler=sampler), energy
        )
        correction = jax.vmap(trainer.energy(state).correction)
        estimate = _self_normalised_share(-np.asarray(correction(draws)), is_zero)
        negatives = [entry["mode_weights"][0] for entry in history[len(history) // 2 :]]
        row(f"EBM on q₀, {sampler} negatives", *estimate, f"{np.mean(negatives):.3f}",
            f"{seconds:.0f}")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--epochs", type=int, default=20, help=f"epochs of {STEPS_PER_EPOCH} steps")
    parser.add_argument("--flow-seconds", type=float, default=120.0, help="budget per flow")
    parser.add_argument("--no-class-weights", action="store_true")
    parser.add_argument("--no-log-z", action="store_true", help="skip the known-Z table")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.epochs} epochs")
    print("\n| dataset | model | held-out LL (raw, nats) | stderr | wall s | notes |")
    print("|---|---|---:|---:|---:|---|")
    for name in args.datasets:
        likelihood_rows(name, args.epochs, args.flow_seconds, args.seed)
    if not args.no_class_weights:
        print("\n| dataset | model | weight of 0 (truth 2/3) | error | negatives' share, "
              "2nd half | wall s |\n|---|---|---:|---:|---:|---:|")  # fmt: skip
        class_weight_rows(args.epochs, args.flow_seconds, args.seed)
    if not args.no_log_z:
        log_z_rows([*MIXTURES, *(f"gaussian-{d}" for d in GAUSSIAN_DIMS)], 1000, args.seed)


if __name__ == "__main__":
    main()
