"""Sampling a trained EBM with :class:`~numpyro_ebm.FlowMCKernel` under NumPyro's ``MCMC``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flowjax.distributions import AbstractDistribution
from numpyro.infer import MCMC

from numpyro_ebm._checks import positive_float, positive_int, seed_value, typed_key
from numpyro_ebm.energies import ebm_model
from numpyro_ebm.kernel import FlowMCKernel
from numpyro_ebm.training.model_io import load_model, saved_preprocessing

__all__ = ["sample_energy", "sample_run"]

SAMPLES_FILE = "samples.npy"
SUMMARY_FILE = "summary.csv"


def sample_energy(
    rng_key: jax.Array,
    energy: Callable[[jax.Array], jax.Array],
    dim: int,
    base_scale: float,
    *,
    num_samples: int,
    num_chains: int = 64,
    num_warmup: int = 200,
    flow: AbstractDistribution | None = None,
    init_positions: jax.Array | np.ndarray | None = None,
    progress_bar: bool = False,
    **kernel_options: Any,
) -> MCMC:
    """Run :class:`~numpyro_ebm.FlowMCKernel` on the tilted EBM ``exp(-E) ρ``.

    Args:
        rng_key: PRNG key.
        energy: The energy ``E`` of one point.
        dim: Dimension of a point.
        base_scale: σ of the tilt ρ = N(0, σ² I).
        num_samples: Draws kept per chain (NumPyro's ``num_samples``).
        num_chains: Walkers (NumPyro's chains, run vectorized and sharing the flow).
        num_warmup: Warm-up iterations (step size and flow adaptation).
        flow: A trained flow to start from (e.g. the trainer's); the kernel's default otherwise.
        init_positions: Initial walkers; rows are reused cyclically if fewer than
            ``num_chains``; draws from ρ by default.
        progress_bar: Show NumPyro's progress bar.
        **kernel_options: More arguments of :class:`~numpyro_ebm.FlowMCKernel`.

    Returns:
        The ``MCMC`` object after the run.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mcmc = sample_energy(jax.random.key(0), lambda x: jnp.sum(x**2), 2, 1.0,
        ...                      num_samples=5, num_chains=4, num_warmup=5,
        ...                      global_move="none")  # MALA only: a quick example
        >>> mcmc.get_samples(group_by_chain=True)["x"].shape
        (4, 5, 2)
    """
    typed_key(rng_key)  # raises a clear TypeError for anything but a single PRNG key
    dim, base_scale = positive_int("dim", dim), positive_float("base_scale", base_scale)
    num_chains = positive_int("num_chains", num_chains, minimum=2)  # an ensemble
    # The key's kind (typed or raw) is kept: NumPyro's MCMC holds the key it is given.
    key_init, key_run = jax.random.split(rng_key)
    if init_positions is None:
        init_positions = base_scale * jax.random.normal(key_init, (num_chains, dim))
    else:
        init_positions = np.asarray(init_positions)
        if init_positions.ndim != 2 or init_positions.shape[1] != dim or not len(init_positions):
            raise ValueError(
                f"expected init_positions of shape (n, {dim}) with n >= 1, "
                f"got {init_positions.shape}"
            )
        if not np.issubdtype(init_positions.dtype, np.floating):
            raise ValueError(
                f"expected init_positions of real numbers, got dtype {init_positions.dtype}"
            )
        init_positions = jnp.asarray(np.resize(init_positions, (num_chains, dim)))
    kernel = FlowMCKernel(
        ebm_model(energy, dim, base_scale=base_scale), flow=flow, **kernel_options
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=progress_bar,
    )
    mcmc.run(key_run, init_params={"x": init_positions})
    return mcmc


def sample_run(
    run_dir: str | os.PathLike,
    *,
    num_samples: int,
    num_chains: int = 64,
    num_warmup: int = 200,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    progress_bar: bool = False,
    energy: eqx.Module | None = None,
) -> tuple[Path, Path]:
    """Sample a trained run's model and write the draws and ArviZ's summary.

    The chains start at the run's final negatives, with the run's flow (if any) as the
    kernel's initial flow. Writes ``samples.npy`` of shape ``(num_chains, num_samples, dim)``
    and ``summary.csv`` (``arviz.summary`` of the draws, EBM factor kept out of the likelihood),
    in the units of the run's raw training data (its preprocessing undone).

    Args:
        run_dir: Directory of a trained run.
        num_samples: Draws per chain.
        num_chains: Chains (walkers).
        num_warmup: Warm-up iterations.
        seed: Seed of the run.
        out_dir: Where to write; ``run_dir`` by default.
        progress_bar: Show NumPyro's progress bar.
        energy: A template of the run's energy network if it is one of your own (see
            :func:`~numpyro_ebm.training.load_model`).

    Returns:
        Paths of the draws and of the summary.
    """
    import arviz

    from numpyro_ebm.diagnostics import from_numpyro

    model = load_model(run_dir, energy)
    dim = int(model.settings["dim"])
    out_dir = Path(run_dir if out_dir is None else out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # before the run: a bad path loses no draws
    mcmc = sample_energy(
        jax.random.key(seed_value("seed", seed)),
        model.energy,
        dim,
        model.base_scale,
        num_samples=num_samples,
        num_chains=num_chains,
        num_warmup=num_warmup,
        flow=model.flow,
        init_positions=model.negatives,
        progress_bar=progress_bar,
    )
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    preprocessing = saved_preprocessing(model.settings)
    samples_path = out_dir / SAMPLES_FILE
    if preprocessing.is_identity:
        np.save(samples_path, draws, allow_pickle=False)
        summary = arviz.summary(from_numpyro(mcmc))
    else:  # back to the training data's units; R̂ and ESS are invariant under the affine map
        draws = preprocessing.inverse(draws)
        np.save(samples_path, draws, allow_pickle=False)
        summary = arviz.summary(arviz.from_dict({"posterior": {"x": draws}}))
    summary_path = out_dir / SUMMARY_FILE
    summary.to_csv(summary_path)
    return samples_path, summary_path
