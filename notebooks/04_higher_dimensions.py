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
# # Higher dimensions: a four-mode mixture in d = 16 to 64
#
# The high-dimensional experiment of Grenioux, Moulines & Gabrié (2023) trains EBMs on an equal
# mixture of four Gaussians $\mathcal N(a\,s_i, I)$ in $d = 16, 32, 64$, with $a = 0.5919$ and
# sign patterns $s_i$: all ones, all minus ones, half minus ones then half ones, and its
# negative. It measures how well the persistent negatives mix with the rank-normalised split
# $\hat R$ across walkers, and reports, after about 7 hours of training,
#
# | d | flowMC-EBM | ULA-EBM | NT-EBM |
# |---|---|---|---|
# | 16 | 1.01 | 7.30 | 2.02 |
# | 32 | 1.01 | 9.29 | 2.50 |
# | 64 | 1.05 | 90.9 | 3.10 |
#
# This notebook runs the same comparison for flowMC and ULA negatives with a budget of a minute
# or two per run: far too short to learn the mixture's fine structure, long enough to see the
# negatives' mixing diverge. Each run is evaluated as the paper does: the persistent walkers
# continue with the energy frozen, and the first 64 are treated as independent chains.
#
# Set `NUMPYRO_EBM_FAST=1` for a quick run (d = 16 only; the test suite does); the outputs
# below come from the full run.

# %%
import os
import time
import warnings

# tqdm (imported by NumPyro) warns when Jupyter widgets are missing; plain progress text is fine.
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from numpyro_ebm.datasets import get_dataset
from numpyro_ebm.metrics import mixing_diagnostics, zone_weights_from_samples
from numpyro_ebm.training import TrainConfig, Trainer

FAST = os.environ.get("NUMPYRO_EBM_FAST", "0") == "1"
NOTEBOOK_START = time.perf_counter()
print(f"fast mode: {FAST}; devices: {jax.devices()}")

DIMS = [16] if FAST else [16, 32, 64]
SAMPLERS = ("flowmc", "ula")

# %% [markdown]
# ## The target
#
# The modes are not far apart coordinate by coordinate ($a = 0.59$ standard deviations), but the
# distances add up over coordinates: the two all-same-sign modes are $2a\sqrt d$ apart (4.7
# standard deviations in $d = 16$, 9.5 in $d = 64$), the others $2a\sqrt{d/2}$ or
# $a\sqrt{2d}$. Projected on the directions $u_1 = \mathbf 1/\sqrt d$ and
# $u_2 = (-\mathbf 1, \mathbf 1)/\sqrt d$ of the sign patterns, the four modes sit on the axes
# at $\pm a\sqrt d$, which is how the samples are drawn below.


# %%
def projection(dim):
    """The 2-D plane of the sign patterns: u1 = 1/sqrt(d), u2 = (-1, ..., 1, ...)/sqrt(d)."""
    u1 = np.ones(dim) / np.sqrt(dim)
    u2 = np.concatenate([-np.ones(dim // 2), np.ones(dim - dim // 2)]) / np.sqrt(dim)
    return np.stack([u1, u2], axis=1)


fig, axes = plt.subplots(1, len(DIMS), figsize=(4 * len(DIMS), 4), squeeze=False)
for ax, dim in zip(axes[0], DIMS, strict=True):
    dataset = get_dataset(f"gmm-{dim}")
    projected = np.asarray(dataset.sample(jax.random.key(0), 2000)) @ projection(dim)
    ax.scatter(projected[:, 0], projected[:, 1], s=2, alpha=0.4)
    means = dataset.mode_means @ projection(dim)
    ax.scatter(means[:, 0], means[:, 1], marker="x", color="k", s=60)
    ax.set(title=f"gmm-{dim}: data, projected", xlabel="$u_1^T x$", aspect="equal")
axes[0, 0].set(ylabel="$u_2^T x$")
fig.tight_layout()

# %% [markdown]
# ## Training
#
# Each run starts from $E_\theta \equiv 0$ with the walkers drawn from $\rho$ and trains for a
# few hundred steps. The settings are shared by both samplers and all dimensions; they are
# smaller than the library's defaults (128 walkers, 16 i-SIR particles, 3 MALA steps per EBM
# step) to fit the time budget. ULA uses the paper's step $(0.125)^2/2$ with 3 steps per EBM
# step. After training, each sampler continues for 100 steps with the energy frozen, giving
# 64 chains of 100 draws.

# %%
shared = dict(
    num_epochs=6,
    steps_per_epoch=50,
    num_walkers=128,
    batch_size=128,
    fit_batch_size=128,
    num_particles=16,
    num_local_steps=3,
    num_data=20_000,
)
if not FAST:
    shared.update(num_epochs=8)
NUM_CHAIN_STEPS = 100
display(pd.Series(shared, name="settings"))

runs = {}
for dim in DIMS:
    for sampler in SAMPLERS:
        start = time.perf_counter()
        trainer = Trainer(f"gmm-{dim}", TrainConfig().with_settings(sampler=sampler, **shared))
        result = trainer.fit(progress_bar=False)
        chains = trainer.negative_chains(result.state, NUM_CHAIN_STEPS)  # (64, steps, d)
        runs[dim, sampler] = {"result": result, "chains": chains}
        print(f"d = {dim}, {sampler}: {time.perf_counter() - start:.0f} s", end=" ")
        print(f"(compilation included), last loss {result.history[-1]['loss']:.3f}")

# %% [markdown]
# ## Mixing and mode weights of the negatives
#
# For each run: the largest $\hat R$ and smallest bulk ESS over coordinates of the 64
# continued chains, and the share of their pooled draws in each mode's zone (the points
# nearest to that mode's centre). An ideal sampler of the current model gives $\hat R \approx 1$;
# the zone weights are then those of the model, which training pushes toward 1/4 each.

# %%
rows = {}
for (dim, sampler), run in runs.items():
    chains = run["chains"]
    dataset = run["result"].trainer.dataset
    weights = zone_weights_from_samples(chains.reshape(-1, dim), dataset.mode_means)
    run["zone_weights"] = np.asarray(weights)
    mixing = mixing_diagnostics(chains)
    rows[f"d = {dim}, {sampler}"] = {
        "max R-hat": mixing["max_rhat"],
        "min bulk ESS": mixing["min_ess_bulk"],
        "max |zone weight - 1/4|": float(np.max(np.abs(run["zone_weights"] - 0.25))),
        "zone weights": np.round(run["zone_weights"], 3).tolist(),
        "global acceptance": run["result"].history[-1].get("global_accept_prob", np.nan),
    }
    run.update(mixing)
display(pd.DataFrame(rows).T)

# %% [markdown]
# ULA's chains do not mix: its $\hat R$ is far above 1 in every dimension, as in the paper,
# and its effective sample size is a small fraction of the draws. Its step
# $\eta = (0.125)^2/2$ moves a walker by about $\sqrt{2\eta k}$ per coordinate in $k$ steps,
# about 2 in the 300 ULA steps of the continued chains, while the modes are $2a\sqrt d$
# apart: each walker explores the neighbourhood of where it started, and the chains disagree.
# The flowMC walkers mix across the whole mixture, with $\hat R$ within a few hundredths of 1,
# because the i-SIR move proposes from a flow fitted to all walkers and jumps in one step.
#
# **What $\hat R$ does and does not say.** ULA's zone shares can look balanced only because
# its walkers stay near where they started, and they started from $\rho$, which is symmetric
# about the four modes: balanced shares are not evidence of mixing, $\hat R$ is. Conversely,
# the flowMC chains agree with each other ($\hat R \approx 1$), so their shares are those of
# the current model, and after a few hundred training steps the model's own weights are still
# off, the more so in higher dimension. Making the model right takes longer training (hours
# in the paper); making the negatives follow the model is what the flow does from the start.
#
# **Mode weights over training.** The trainer records, after each epoch, the share of the
# walkers (the current negatives) in each zone. The flowMC negatives stay spread over the four
# zones; ULA's shares move with whatever the energy does to the basins its walkers are in.

# %%
fig, axes = plt.subplots(
    len(SAMPLERS), len(DIMS), figsize=(4 * len(DIMS), 6), sharex=True, sharey=True, squeeze=False
)
for column, dim in enumerate(DIMS):
    for row, sampler in enumerate(SAMPLERS):
        ax = axes[row, column]
        history = runs[dim, sampler]["result"].history
        steps = [entry["step"] for entry in history]
        weights = np.array([entry["mode_weights"] for entry in history])
        for mode in range(weights.shape[1]):
            ax.plot(steps, weights[:, mode], marker="o", ms=3, label=f"mode {mode}")
        ax.axhline(0.25, color="k", linestyle="--")
        ax.set_title(f"d = {dim}, {sampler}")
        ax.set(ylim=(0, 0.6))
    axes[-1, column].set(xlabel="training step")
for row in range(len(SAMPLERS)):
    axes[row, 0].set(ylabel="share of negatives")
axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
fig.tight_layout()

# %% [markdown]
# **The negatives in the sign-pattern plane.** The final walkers of each run, projected as the
# data were above.

# %%
fig, axes = plt.subplots(
    len(SAMPLERS), len(DIMS), figsize=(4 * len(DIMS), 8), sharex=True, sharey=True, squeeze=False
)
for column, dim in enumerate(DIMS):
    for row, sampler in enumerate(SAMPLERS):
        result = runs[dim, sampler]["result"]
        negatives = np.asarray(result.trainer.negatives(result.state)) @ projection(dim)
        ax = axes[row, column]
        ax.scatter(negatives[:, 0], negatives[:, 1], s=4, alpha=0.6, color=f"C{row}")
        means = result.trainer.dataset.mode_means @ projection(dim)
        ax.scatter(means[:, 0], means[:, 1], marker="x", color="k", s=60)
        ax.set(title=f"d = {dim}, {sampler} negatives", aspect="equal")
    axes[-1, column].set(xlabel="$u_1^T x$")
for row in range(len(SAMPLERS)):
    axes[row, 0].set(ylabel="$u_2^T x$")
fig.tight_layout()

# %% [markdown]
# ## Key results
#
# The last cell checks the claims, so the test suite fails if they stop holding.
#
# - **flowMC negatives mix:** $\hat R < 1.1$ in every dimension. For 64 independent chains of
#   100 draws that sample the same distribution, the rank-normalised split $\hat R$ stays
#   within about 0.01 of 1; 1.1 is the classic alarm level (the runs give 1.00 to 1.02).
# - **ULA negatives do not:** $\hat R > 1.2$ in every dimension (2.3 to 2.5 in these runs).
# - **flowMC's negatives cover the modes evenly in d = 16:** every zone weight of the pooled
#   chains is within 0.1 of 1/4. With an effective sample size in the thousands, their Monte
#   Carlo error is below 0.01; the rest of the allowance is the model's own error after a few
#   hundred training steps (about 0.05 here). In higher dimension the short runs leave the
#   model's weights unbalanced (the paper trains for hours), so no weight is asserted there.

# %%
for dim in DIMS:
    flowmc, ula = runs[dim, "flowmc"], runs[dim, "ula"]
    print(f"d = {dim}: max R-hat flowMC {flowmc['max_rhat']:.3f}, ULA {ula['max_rhat']:.2f}")
    assert flowmc["max_rhat"] < 1.1, (dim, flowmc["max_rhat"])
    assert ula["max_rhat"] > 1.2, (dim, ula["max_rhat"])
assert np.max(np.abs(runs[16, "flowmc"]["zone_weights"] - 0.25)) < 0.1, runs[16, "flowmc"]
print(f"all checks passed; notebook run time {time.perf_counter() - NOTEBOOK_START:.0f} s")
