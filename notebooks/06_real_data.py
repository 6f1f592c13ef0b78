# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Real data: an EBM of handwritten digits, checked against flows
#
# The other notebooks train on targets whose density is known. This one is the workflow for
# data whose density nobody knows: scikit-learn's 8 x 8 handwritten digits (d = 64, pixel
# levels 0 to 16). With no truth to compare against, a model is judged the way any density
# model is:
#
# 1. **held-out log-likelihood** of test images, with its standard error, against simple and
#    strong baselines (a Gaussian, a flowjax normalizing flow) fitted to the same split;
# 2. **samples**, looked at as images;
# 3. **a case whose answer is known** built from the real data: the 0s and 1s at 2 : 1, where
#    the model's weight of the 0s must come out at 2/3, trained with flowMC and with ULA
#    negatives;
# 4. **out-of-distribution detection**: does the energy rank test digits below shuffled,
#    flipped and noise images?
#
# Set `NUMPYRO_EBM_FAST=1` for a quick run (the test suite does); the outputs below come from
# the full run.

# %%
import os
import tempfile
import time
import warnings
from pathlib import Path

# tqdm (imported by NumPyro) warns when Jupyter widgets are missing; plain progress text is fine.
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import MultivariateNormal, Normal
from flowjax.flows import masked_autoregressive_flow
from IPython.display import Image, display

from numpyro_ebm.datasets import get_dataset
from numpyro_ebm.energies import MLPEnergy
from numpyro_ebm.flow_base import FlowBaseEnergy, fit_base_flow
from numpyro_ebm.metrics import mixing_diagnostics
from numpyro_ebm.ood import ood_aurocs
from numpyro_ebm.plotting import plot_images
from numpyro_ebm.training import TrainConfig, Trainer
from numpyro_ebm.training.heldout import heldout_metrics
from numpyro_ebm.training.validation import trusted_validation

FAST = os.environ.get("NUMPYRO_EBM_FAST", "0") == "1"
NOTEBOOK_START = time.perf_counter()
FIGURES = Path(tempfile.mkdtemp())  # plot_images writes PNG files; they are shown from here
print(f"fast mode: {FAST}; devices: {jax.devices()}")

# %% [markdown]
# ## The data
#
# `get_dataset("digits")` holds fixed training, validation and test splits (80/10/10) in raw
# pixel levels. The trainer fits its preprocessing on the training split: the integer levels
# are dequantised (uniform noise in each level's unit cell) and standardised; every density
# below is a density of those coordinates, reported in raw pixel units by adding the
# preprocessing's log-Jacobian. A dequantised log-likelihood is a lower bound on the
# log-probability of the integer images.

# %%
digits = get_dataset("digits")
print(
    f"d = {digits.dim}; train / validation / test: {len(digits.data)} / "
    f"{len(digits.validation_data)} / {len(digits.test_data)} images"
)
fig, axes = plt.subplots(2, 12, figsize=(10, 2))
for ax, image in zip(axes.flat, digits.data, strict=False):
    ax.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
    ax.axis("off")
fig.suptitle("the first 24 training images")
fig.tight_layout()

# %% [markdown]
# ## Baselines: a Gaussian and two flowjax flows
#
# The trainer's preprocessing is shared by every model, so they are all compared on the same
# coordinates and the same dequantised test points. The baselines are a full-covariance
# Gaussian and two rational-quadratic spline flows fitted by maximum likelihood with early
# stopping ({func}`~numpyro_ebm.flow_base.fit_base_flow`): a coupling flow (RealNVP-style,
# cheap to sample, so a sampler can propose from it) and a masked autoregressive flow (MAF,
# usually the better density but sequential to sample in d = 64; skipped in fast mode).

# %%
STEPS_PER_EPOCH = 10 if FAST else 100
base_config = TrainConfig.for_dimension(digits.dim).with_settings(
    steps_per_epoch=STEPS_PER_EPOCH, num_epochs=2 if FAST else 6, patience=3
)
probe = Trainer(digits, base_config)  # the splits and preprocessing every model here shares
prep, train_z = probe.preprocessing, np.asarray(probe.data)
key_test, key_coupling, key_maf, key_energy, key_ebm = jax.random.split(jax.random.key(0), 5)
test_z = prep.transform(digits.test_data, key_test)


def heldout_row(log_prob_fn, seconds):
    """Mean held-out log-likelihood per image in raw units, its stderr, and the fit's time."""
    log_probs = np.asarray(jax.vmap(log_prob_fn)(jnp.asarray(test_z))) + prep.log_det_jacobian
    stderr = log_probs.std(ddof=1) / np.sqrt(len(log_probs))
    return {"held-out LL (nats)": log_probs.mean(), "stderr": stderr, "fit s": seconds}


rows = {}
covariance = np.cov(train_z.T) + 1e-6 * np.eye(digits.dim)  # ridge: collinear columns
gaussian = MultivariateNormal(train_z.mean(axis=0), covariance)
rows["Gaussian (full covariance)"] = heldout_row(gaussian.log_prob, 0.0)

# 4 layers of width 64 validate better than fit_base_flow's larger default on 1439 images.
flow_settings = dict(flow_layers=4, nn_width=64, max_epochs=10 if FAST else 200, max_patience=10)
start = time.perf_counter()
coupling, _ = fit_base_flow(key_coupling, train_z, **flow_settings)
rows["flowjax coupling flow"] = heldout_row(coupling.log_prob, time.perf_counter() - start)

if not FAST:
    start = time.perf_counter()
    maf = masked_autoregressive_flow(
        key_maf,
        base_dist=Normal(jnp.zeros(digits.dim)),
        transformer=RationalQuadraticSpline(knots=8, interval=5.0),
        flow_layers=4,
        nn_width=128,  # a MADE layer needs about d hidden units to link all inputs to outputs
    )
    maf, _ = fit_base_flow(key_maf, train_z, flow=maf, **flow_settings)
    rows["flowjax MAF"] = heldout_row(maf.log_prob, time.perf_counter() - start)
display(pd.DataFrame(rows).T.round(2))

# %% [markdown]
# ## The EBM: a correction of the coupling flow
#
# An EBM with an MLP energy on a Gaussian ρ must learn the digits from scratch and reaches
# about −122 nats in the benchmark ({doc}`../performance`), far below the flows. The better
# model is an exponential tilt of the fitted coupling flow,
# $p_\theta(x) \propto e^{-c_\theta(x)}\,q_0(x)$
# ({class}`~numpyro_ebm.flow_base.FlowBaseEnergy`): the correction $c_\theta$ starts at zero,
# so training starts *from* the flow, and the flowMC walkers start as exact draws of it and
# propose from it. Training is persistent contrastive maximum likelihood with flowMC
# negatives, with the settings of {meth}`~numpyro_ebm.training.TrainConfig.for_dimension`.
# After every epoch the trainer estimates the validation images' log-likelihood (log Z by
# importance sampling from the sampler's flow, with few draws: a noisy figure, see its
# importance ESS in the table) and keeps the best epoch's state; the dashed line is the
# coupling flow on the same validation points, where the EBM starts. The validation figure is
# still rising when the run stops after 600 steps (the notebook's time budget): a longer run
# would likely gain more.

# %%
energy = FlowBaseEnergy(
    MLPEnergy(digits.dim, width=128, depth=3, key=key_energy), coupling, probe.base_scale
)
ebm_config = base_config.with_settings(base_scale=probe.base_scale)
start = time.perf_counter()
ebm = Trainer(digits, ebm_config, energy=energy).fit(progress_bar=False)
ebm_seconds = time.perf_counter() - start
ebm_state = ebm.best_state if ebm.best_state is not None else ebm.state
print(f"{len(ebm.history)} epochs of {STEPS_PER_EPOCH} steps in {ebm_seconds:.0f} s")

history = pd.DataFrame(ebm.history).set_index("step")
fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(10, 3.5), sharex=True)
ax_loss.plot(history.index, history["loss"], marker="o", ms=3)
ax_loss.set(xlabel="training step", ylabel="loss (energy gap)", title="contrastive loss")
ax_valid.errorbar(  # the trainer's validation figures are in raw pixel units
    history.index,
    history["val_log_likelihood"],
    yerr=2 * history["val_log_likelihood_stderr"],
    marker="o",
    ms=3,
)
flow_valid_ll = np.mean(jax.vmap(coupling.log_prob)(jnp.asarray(probe.validation_data)))
ax_valid.axhline(flow_valid_ll + prep.log_det_jacobian, color="C1", ls="--", label="coupling flow")
ax_valid.set(xlabel="training step", ylabel="nats per image", title="validation log-likelihood")
ax_valid.legend()
fig.tight_layout()
display(history[["loss", "global_accept_prob", "val_log_likelihood", "val_importance_ess"]])

# %% [markdown]
# ## Held-out log-likelihood
#
# {func}`~numpyro_ebm.training.heldout.heldout_metrics` estimates the EBM's log Z once more
# for the test figure, with 16384 importance draws (annealed importance sampling takes over
# when their effective sample size is below 5%). The proposal is the base flow $q_0$ itself
# rather than the sampler's flow: the model is $q_0$ tilted by $e^{-c_\theta}$, so the
# importance weights are $e^{-c_\theta(x)}$, as even as the correction is flat. The standard
# error is that of the mean over test images. Because the EBM is a tilt of the coupling flow,
# the per-image difference to that flow on the same test points has a much smaller standard
# error than either figure (the log Z error added).

# %%
trainer = ebm.trainer
metrics = heldout_metrics(
    key_ebm,
    trainer.energy(ebm_state),
    trainer.base_scale,
    coupling,  # q0 as the proposal: the importance weights are exp(-c), near 1
    prep,
    digits.test_data,
    num_samples=4096 if FAST else 16_384,
)
rows["EBM on the coupling flow"] = {
    "held-out LL (nats)": metrics["heldout_log_likelihood"],
    "stderr": metrics["heldout_log_likelihood_stderr"],
    "fit s": ebm_seconds + rows["flowjax coupling flow"]["fit s"],
}
tilted = jax.vmap(trainer.tilted_energy(ebm_state))
gain = (
    -np.asarray(tilted(jnp.asarray(test_z)))
    - metrics["log_normalizer"]
    - np.asarray(jax.vmap(coupling.log_prob)(jnp.asarray(test_z)))
)
gain_stderr = np.sqrt(gain.var(ddof=1) / len(gain) + metrics["log_normalizer_stderr"] ** 2)
table = pd.DataFrame(rows).T
display(table.round(2))
print(f"run time so far {time.perf_counter() - NOTEBOOK_START:.0f} s")
print(
    f"log Z by {metrics['method']} (importance ESS {metrics['importance_ess']:.0f} of "
    f"{metrics['num_importance_samples']}); EBM - coupling flow per test image: "
    f"{gain.mean():+.2f} ± {gain_stderr:.2f} nats"
)

fig, ax = plt.subplots(figsize=(7, 3))
ax.errorbar(table["held-out LL (nats)"], range(len(table)), xerr=2 * table["stderr"], fmt="o")
ax.set(yticks=range(len(table)), yticklabels=table.index, xlabel="held-out LL, nats per image")
ax.set_title("test digits (± 2 stderr)")
fig.tight_layout()

# %% [markdown]
# Read the table honestly. The EBM improves on the flow it corrects, by about 2 nats per
# image, more than twice its paired standard error, and both are far above the Gaussian. But
# the MAF, a stronger flow fitted in half a minute, is better than both by about 5 nats: on
# digits **this EBM does not beat the best flow**. The remedy is to correct the MAF instead:
# `FlowBaseEnergy(correction, maf, σ, proposal_flow=coupling)` keeps the MAF as the model's
# base (its density is one pass) while the sampler proposes from the coupling flow (a MAF
# draws its 64 coordinates one after the other). In `benchmarks/real_data.py` that EBM is the
# best model on digits, 0.25 ± 0.06 nats per image above the MAF ({doc}`../performance`); it
# is left out here to keep the notebook's run short. The log Z behind the EBM's figure is
# sound: a quarter of the importance draws count (the ESS printed above), where the sampler's flow
# as proposal gives a handful.
#
# ## Samples
#
# The persistent flowMC walkers of the best state are approximate draws from the model (of
# the last iterate of its energy, which the averaged model smooths; they mix, as the i-SIR
# moves propose from a flow fitted to them). Mapped back to pixel levels (and clipped to
# 0..16), next to test images:

# %%
samples = prep.inverse(np.asarray(trainer.negatives(ebm_state)))
display(
    Image(
        plot_images(
            digits.test_data,
            np.clip(samples, 0, 16),
            FIGURES / "samples.png",
            (8, 8),
            samples_label="EBM samples",
        )
    )
)

# %% [markdown]
# ## A known answer: the 2 : 1 class weight of 0s and 1s
#
# `digits-2to1` keeps the 0s and 1s of each split at exactly 2 : 1 and comes with a logistic
# classifier of 0 against 1. An EBM of these images (an MLP energy on ρ, the trainer's
# defaults for d = 64) should put weight 2/3 on the 0s; after every epoch the trainer
# classifies its negatives, mapped back to pixels, and records the share of 0s. This is the
# real-data version of the 2:1 experiment of notebook 02: the same EBM trained with flowMC
# negatives and with ULA negatives.

# %%
two_to_one = get_dataset("digits-2to1")
class_config = TrainConfig.for_dimension(two_to_one.dim).with_settings(
    steps_per_epoch=STEPS_PER_EPOCH, num_epochs=3 if FAST else 12
)
class_runs = {}
for sampler in ("flowmc", "ula"):
    start = time.perf_counter()
    class_runs[sampler] = Trainer(two_to_one, class_config.with_settings(sampler=sampler)).fit(
        progress_bar=False
    )
    print(f"{sampler}: {time.perf_counter() - start:.0f} s")

# The trainer's per-epoch R-hat needs longer epochs than the fast run's; as notebook 04 does,
# continue each run's walkers with the energy frozen and treat the first 64 as chains.
NUM_CHAIN_STEPS = 100
mixing = {
    sampler: mixing_diagnostics(result.trainer.negative_chains(result.state, NUM_CHAIN_STEPS))
    for sampler, result in class_runs.items()
}

fig, (ax_share, ax_valid) = plt.subplots(1, 2, figsize=(11, 3.5), sharex=True)
weights_of_zero, trusted = {}, {}
for sampler, result in class_runs.items():
    steps = [entry["step"] for entry in result.history]
    weights_of_zero[sampler] = np.array([entry["mode_weights"][0] for entry in result.history])
    ax_share.plot(steps, weights_of_zero[sampler], marker="o", ms=3, label=f"{sampler} negatives")
    # A validation on fewer than 5% effective importance draws is biased high: drawn apart.
    valid = np.array([entry["val_log_likelihood"] for entry in result.history])
    trusted[sampler] = np.isfinite([trusted_validation(entry) for entry in result.history])
    label = sampler if trusted[sampler].any() else None
    (line,) = ax_valid.plot(
        steps, np.where(trusted[sampler], valid, np.nan), marker="o", ms=3, label=label
    )
    if not trusted[sampler].all():
        untrusted = ~trusted[sampler]
        ax_valid.plot(
            np.array(steps)[untrusted], valid[untrusted], "x", color=line.get_color(),
            label=f"{sampler}, untrusted (ESS < 5% of draws)",
        )  # fmt: skip
ax_share.axhline(2 / 3, color="k", ls="--", label="truth (2/3)")
ax_share.set(xlabel="training step", ylabel="share of 0s among the negatives", ylim=(-0.02, 1.02))
ax_share.legend()
ax_valid.set(xlabel="training step", ylabel="nats per image", title="validation log-likelihood")
ax_valid.legend()
fig.tight_layout()
last_global_accept = {
    s: r.history[-1].get("global_accept_prob", np.nan) for s, r in class_runs.items()
}
class_table = pd.DataFrame(
    {
        sampler: {
            "final share of 0s": weights[-1],
            "mean, second half": weights[len(weights) // 2 :].mean(),
            "sd over epochs, second half": weights[len(weights) // 2 :].std(),
            "|final - 2/3|": abs(weights[-1] - 2 / 3),
            "max R-hat, continued chains": mixing[sampler]["max_rhat"],
            "global acceptance (last epoch)": last_global_accept[sampler],
            "share of trusted validations": trusted[sampler].mean(),
        }
        for sampler, weights in weights_of_zero.items()
    }
).T
display(class_table.round(3))
print(f"run time so far {time.perf_counter() - NOTEBOOK_START:.0f} s")

# %% [markdown]
# This does **not** reproduce the 2-D result of notebook 02, and the notebook says so rather
# than tuning until it does. The flowMC walkers' share of 0s swings from epoch to epoch across
# most of [0, 1]: early in training the walkers mix, so their share is the class weight of
# the energy they sample (the last iterate), and with 225 training images that weight is not
# settled by a few hundred steps at this learning rate. Later the flow's global moves are
# accepted less and less often (6% in the last epoch), and the continued chains' max
# $\hat R$ of about 1.6 says the flowMC negatives no longer mix well either: the trainer's
# per-epoch $\hat R$, over groups of 16 walkers, stays near 1.03 and misses it. The ULA
# walkers are stuck (max $\hat R$ above 2): they barely move between classes in 64
# dimensions, so their share stays near where it started and sits close to 2/3 without
# measuring the model; as notebook 04 shows, a steady share of stuck chains is not evidence of
# a right weight. The validation log-likelihoods (right) cannot rank the two runs: in 64
# dimensions neither ρ (ULA's proposal) nor the sampler's flow (flowMC's, accepted 6% of the
# time) is close enough to the model for importance sampling, and all but ULA's first two
# validations rest on fewer than 5% effective draws (×). Such a log Z is biased low and the
# figure high, so the trainer never counts it as the best; the held-out figures above used
# the EBM's own base flow as proposal instead.
#
# ## Out-of-distribution detection
#
# The energy $E(x) = -\log p(x) + \text{const}$ is an OOD score: higher for images the model
# finds unlikely. {func}`~numpyro_ebm.ood.ood_aurocs` compares the test digits' energies with
# those of shifted copies (each image's pixels shuffled; flipped left to right; Gaussian and
# uniform noise with the pixels' moments and ranges) and of 8 x 8 patches of natural
# photographs, as the AUROC (1: every shifted image scores higher than every test digit; 0.5:
# no better than chance). The coupling flow's $-\log q_0$ is scored the same way.

# %%
patches = get_dataset("patches").test_data[: len(digits.test_data)]
ebm_energy = trainer.total_energy_fn(ebm_state)
flow_energy = jax.jit(jax.vmap(lambda z: -coupling.log_prob(z)))
scorers = {  # energies of raw images: preprocessed (dequantised) as the test points were
    "EBM": lambda x: np.asarray(ebm_energy(prep.transform(x, jax.random.key(5)))),
    "coupling flow": lambda x: np.asarray(flow_energy(prep.transform(x, jax.random.key(5)))),
}
aurocs = pd.DataFrame(
    {
        name: ood_aurocs(
            score,
            digits.test_data,
            jax.random.key(6),
            image_shape=(8, 8),
            others={"patches": patches},
        )
        for name, score in scorers.items()
    }
)
display(aurocs.round(3))
print(f"run time so far {time.perf_counter() - NOTEBOOK_START:.0f} s")
ax = aurocs.plot.bar(figsize=(7, 3), ylim=(0.4, 1.02), rot=0)
ax.axhline(0.5, color="k", lw=0.8)
ax.set(ylabel="AUROC", title="test digits against each shift")
ax.figure.tight_layout()

# %% [markdown]
# Noise, shuffled pixels and photograph patches are told apart from digits almost perfectly
# by both energies. Flipped digits are the hard shift: many digits (0, 1, 8) look alike when
# mirrored. On this test the EBM's correction changes little over its base flow.
#
# ## Key results
#
# The last cell checks the claims that hold in the fast run too, so the test suite fails if
# they stop holding:
#
# - **The EBM is a real density model of the digits:** its held-out log-likelihood is finite
#   and at least 5 nats per image above the Gaussian's. It starts as the coupling flow, which
#   is about 12 nats above the Gaussian after the fast run's 10 epochs of fitting, 17 after
#   the full fit.
# - **Training does not make the flow worse:** the EBM's per-image gain over its base flow is
#   above −3 standard errors (it is +2.1 ± 0.9 nats in the full run, 0 in the fast run, whose
#   averaged correction has barely moved from zero).
# - **Its log Z is trustworthy:** estimated by plain importance sampling from the base flow
#   with an ESS of at least 5% of the draws (the fallback to AIS was not needed).
# - **OOD:** AUROC above 0.95 against pixel-shuffled images, both noises and photograph
#   patches, and above 0.75 against flipped digits, which keep most of a digit's statistics
#   (0.85 to 0.90 in these runs).
# - **2:1 mixing:** ULA's continued chains have max $\hat R$ > 1.2 (2.0 in the fast run, 2.2
#   in the full run), and flowMC's are lower (1.00 and 1.58).
#   The class weight itself is not asserted: the runs above do not recover 2/3.

# %%
ebm_ll = table.loc["EBM on the coupling flow", "held-out LL (nats)"]
gaussian_ll = table.loc["Gaussian (full covariance)", "held-out LL (nats)"]
print(f"held-out LL: EBM {ebm_ll:.2f}, Gaussian {gaussian_ll:.2f} nats per image")
assert np.isfinite(ebm_ll) and ebm_ll > gaussian_ll + 5, table
assert gain.mean() > -3 * gain_stderr, (gain.mean(), gain_stderr)
assert metrics["method"] == "importance", metrics
assert metrics["importance_ess"] >= 0.05 * metrics["num_importance_samples"], metrics
for shift in ("pixel-shuffled", "noise", "uniform", "patches"):
    assert aurocs.loc[shift, "EBM"] > 0.95, aurocs
assert aurocs.loc["flipped", "EBM"] > 0.75, aurocs
print(f"max R-hat: flowMC {mixing['flowmc']['max_rhat']:.3f}, ULA {mixing['ula']['max_rhat']:.3f}")
assert mixing["ula"]["max_rhat"] > 1.2, mixing
assert mixing["flowmc"]["max_rhat"] < mixing["ula"]["max_rhat"], mixing
print(f"all checks passed; notebook run time {time.perf_counter() - NOTEBOOK_START:.0f} s")
