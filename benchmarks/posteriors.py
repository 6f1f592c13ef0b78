"""Posteriors benchmark: FlowMCKernel with its defaults against NumPyro NUTS, in one run.

For every posterior of the suite (posteriordb's eight schools, GARCH(1,1), two-component
mixture, AR(5) and two kid-IQ regressions with the unstandardised ``mom_iq``; the README's 2:1
two-mode target moved 1e3 away and stretched to scales 1e-3 and 1e3; a linear regression with an
unstandardised predictor; Neal's funnel) the script runs both samplers from the same key and
prints

- ``max |Δ|/sd``: the largest, over the scalar parameters of the constrained posterior (vector
  sites flattened), of |sampler's mean − reference mean| / reference sd;
- ``|w-2/3|`` on the two-mode targets: the error of the top-right mode's weight;
- ``R̂``: the largest rank-normalised split R̂ (ArviZ) over the parameters, chains = walkers for
  FlowMCKernel;
- the wall time of each sampler, compilation included, and their ratio.

References are analytic for the synthetic posteriors and a long NUTS run otherwise (4 chains,
``--reference-samples`` draws each, target acceptance 0.9, dense mass where posteriors are
strongly correlated), made in this process after the timed runs (so they cannot warm any cache
the timed runs use) and kept in memory, or in ``--reference-cache FILE`` (keep it outside the
repository). The script ends with a Markdown table for ``docs/performance.md`` and the goals of
issue 7: every posterior within 0.1 sd (and |w − 2/3| ≤ 0.01), wall time ≤ 1.5× NUTS.

Run::

    .venv/bin/python benchmarks/posteriors.py                        # the whole suite
    .venv/bin/python benchmarks/posteriors.py --quick --posteriors kidiq-kidscore_momiq
    .venv/bin/python benchmarks/posteriors.py --reference-cache /tmp/references.json

Compare wall times only within one run: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import arviz
import jax
import numpy as np
from _posteriordb_models import DEFAULT_POSTERIORDB_DIR, POSTERIORDB
from _report import markdown_table, print_detail
from _suite import Posterior, Reference, build_suite, flatten_draws, suite_names
from numpyro.infer import MCMC, NUTS

import numpyro_ebm
from numpyro_ebm import FlowMCKernel
from numpyro_ebm.health import stalled_fraction

#: Issue 7's goals: FlowMCKernel's means within this many reference sds of the reference...
GOAL_ERROR = 0.1
#: ... the top-right mode's weight within this of 2/3 on the two-mode targets ...
GOAL_WEIGHT_ERROR = 0.01
#: ... and wall time at most this multiple of NUTS's.
GOAL_TIME_RATIO = 1.5
#: NUTS chains, for the timed run and the reference alike.
NUTS_CHAINS = 4
#: Target acceptance of the reference runs: above NUTS's default 0.8 so that they take smaller
#: steps where curvature varies (eight schools' tau, GARCH's boundary).
REFERENCE_ACCEPT_PROB = 0.9
#: Iterations per sampler with ``--quick``.
QUICK_ITERATIONS = 200


class Run(NamedTuple):
    """Draws of one sampler on one posterior."""

    names: tuple[str, ...]
    draws: np.ndarray  # (chains, draws, parameters)
    seconds: float
    weight: float  # top-right mode's weight, NaN where not a two-mode target
    notes: str


def run_key(seed: int) -> jax.Array:
    """The PRNG key both samplers get: a raw key, as in NumPyro's examples."""
    return jax.random.PRNGKey(seed)


def _draws(posterior: Posterior, mcmc: MCMC, start: float) -> tuple:
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    seconds = time.perf_counter() - start
    names, draws = flatten_draws(samples)
    weight = (
        float(np.mean(posterior.mode_indicator(samples)))
        if posterior.mode_indicator is not None
        else math.nan
    )
    return names, draws, seconds, weight


def _kernel_notes(mcmc: MCMC) -> str:
    """Kept draws' global and local acceptance and stalled share; step size(s); particles."""
    stats = mcmc.get_extra_fields()
    notes = [
        f"{label} {float(np.mean(stats[field])):.3f}"
        for label, field in (("global acc.", "global_accept_prob"), ("local acc.", "accept_prob"))
        if field in stats
    ]
    if "accept_prob" in stats:  # the health check's share of stalled local moves
        notes.append(f"stalled {stalled_fraction(stats['accept_prob']):.2%}")
    # The step size may become per-coordinate (a preconditioner): report its range.
    step_size = np.ravel(np.asarray(getattr(mcmc.last_state, "step_size", np.nan), float))
    if step_size.size == 1:
        notes.append(f"step {step_size[0]:.2e}")
    else:
        notes.append(f"step {step_size.min():.2e}..{step_size.max():.2e}")
    adaptation = getattr(mcmc.last_state, "adaptation", None)
    if adaptation is not None:  # i-SIR particle chunks drawn after warm-up, of all
        notes.append(
            f"particle chunks {int(adaptation.particle_chunks)}/"
            f"{adaptation.particle_accept.shape[0]}"
        )
    return ", ".join(notes)


def run_flowmc(posterior: Posterior, key: jax.Array, args: argparse.Namespace) -> Run:
    """FlowMCKernel with its defaults; warnings raised during the run go into ``notes``."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc = MCMC(
            FlowMCKernel(posterior.model, adapt_num_particles=args.adapt_particles),
            num_warmup=args.num_warmup,
            num_samples=args.num_samples,
            num_chains=args.num_walkers,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(key, **posterior.model_kwargs)
        names, draws, seconds, weight = _draws(posterior, mcmc, start)
    notes = _kernel_notes(mcmc)
    kernel_warnings = sorted(
        {
            str(w.message).splitlines()[0][:120]
            for w in caught
            if not issubclass(
                w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
            )
        }
    )
    if kernel_warnings:
        notes += "; warned: " + " | ".join(kernel_warnings)
    return Run(names, draws, seconds, weight, notes)


def run_nuts(
    posterior: Posterior,
    key: jax.Array,
    *,
    num_warmup: int,
    num_samples: int,
    chain_method: str,
    dense_mass: bool = False,
    target_accept_prob: float = 0.8,
) -> Run:
    """NumPyro NUTS with 4 chains (defaults unless a reference run asks for more)."""
    start = time.perf_counter()
    mcmc = MCMC(
        NUTS(posterior.model, dense_mass=dense_mass, target_accept_prob=target_accept_prob),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=NUTS_CHAINS,
        chain_method=chain_method,
        progress_bar=False,
    )
    mcmc.run(key, **posterior.model_kwargs)
    names, draws, seconds, weight = _draws(posterior, mcmc, start)
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    return Run(names, draws, seconds, weight, f"{divergences} divergences")


def max_rhat(draws: np.ndarray) -> float:
    """Largest rank-normalised split R̂ over the parameters of ``(chains, draws, parameters)``."""
    rhat = arviz.rhat(draws, method="rank", chain_axis=0, draw_axis=1)
    return float(np.max(rhat))


def min_ess(draws: np.ndarray) -> float:
    """Smallest bulk ESS (ArviZ, rank-normalised) over parameters; draws (chains, draws, p)."""
    ess = arviz.ess(draws, method="bulk", chain_axis=0, draw_axis=1)
    return float(np.min(ess))


def reference_for(
    posterior: Posterior, key: jax.Array, args: argparse.Namespace, cache: dict
) -> Reference:
    """Analytic moments, or those of a long NUTS run (from ``cache`` when it has them)."""
    if posterior.reference is not None:
        return posterior.reference
    cache_key = f"{posterior.name}|{args.reference_warmup}|{args.reference_samples}|{args.seed}"
    if cache_key not in cache:
        run = run_nuts(
            posterior,
            key,
            num_warmup=args.reference_warmup,
            num_samples=args.reference_samples,
            chain_method=args.nuts_chain_method,
            dense_mass=posterior.dense_mass,
            target_accept_prob=REFERENCE_ACCEPT_PROB,
        )
        mass = "dense" if posterior.dense_mass else "diagonal"
        cache[cache_key] = {
            "names": list(run.names),
            "mean": run.draws.mean(axis=(0, 1)).tolist(),
            "sd": run.draws.std(axis=(0, 1)).tolist(),
            "source": f"NUTS {NUTS_CHAINS}x{args.reference_samples}, {mass} mass, {run.notes}",
            "rhat": max_rhat(run.draws),
        }
    entry = cache[cache_key]
    return Reference(
        tuple(entry["names"]),
        np.asarray(entry["mean"]),
        np.asarray(entry["sd"]),
        entry["source"],
        entry["rhat"],
    )


def max_error(run: Run, reference: Reference) -> tuple[float, str]:
    """Largest |mean − reference mean| / reference sd, and the parameter where it is."""
    if run.names != reference.names:
        raise ValueError(f"Parameters {run.names} differ from the reference's {reference.names}.")
    errors = np.abs(run.draws.mean(axis=(0, 1)) - reference.mean) / reference.sd
    if not np.all(np.isfinite(errors)):
        return math.inf, "non-finite draws"
    worst = int(np.argmax(errors))
    return float(errors[worst]), reference.names[worst]


def evaluate(posterior: Posterior, key: jax.Array, args: argparse.Namespace, cache: dict) -> dict:
    """Both samplers on one posterior, then the reference; one row of the table."""
    key_flowmc_nuts, key_reference = jax.random.split(key)
    flowmc = run_flowmc(posterior, key_flowmc_nuts, args)
    nuts = run_nuts(
        posterior,
        key_flowmc_nuts,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        chain_method=args.nuts_chain_method,
    )
    reference = reference_for(posterior, key_reference, args, cache)
    row = {"posterior": posterior.name, "params": len(reference.names), "reference": reference}
    for label, run in (("flowmc", flowmc), ("nuts", nuts)):
        row[f"{label}_error"], row[f"{label}_worst"] = max_error(run, reference)
        row[f"{label}_weight_error"] = abs(run.weight - 2 / 3)
        row[f"{label}_rhat"] = max_rhat(run.draws)
        row[f"{label}_seconds"] = run.seconds
        row[f"{label}_ess_per_second"] = min_ess(run.draws) / run.seconds
        row[f"{label}_notes"] = run.notes
    row["ratio"] = flowmc.seconds / nuts.seconds
    weight_ok = posterior.mode_indicator is None or row["flowmc_weight_error"] <= GOAL_WEIGHT_ERROR
    row["accurate"] = row["flowmc_error"] <= GOAL_ERROR and weight_ok
    row["fast"] = row["ratio"] <= GOAL_TIME_RATIO
    return row


def _kernel_version() -> str:
    """The commit of the imported numpyro_ebm (``+dirty`` with local changes), and its path."""
    package = Path(numpyro_ebm.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty=+dirty"],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    return f"{commit} ({package})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--posteriors",
        nargs="+",
        choices=suite_names(),
        metavar="NAME",
        help=f"posteriors to run (default: all): {', '.join(suite_names())}",
    )
    parser.add_argument(
        "--posteriordb",
        type=Path,
        default=DEFAULT_POSTERIORDB_DIR,
        metavar="DIR",
        help="folder of posteriordb's data zips",
    )
    parser.add_argument("--num-walkers", type=int, default=128)
    parser.add_argument("--num-warmup", type=int, help="default 1000 (200 with --quick)")
    parser.add_argument("--num-samples", type=int, help="default 1000 (200 with --quick)")
    parser.add_argument(
        "--nuts-chain-method",
        default="vectorized",
        choices=["vectorized", "sequential"],
        help="vectorized was faster for 4 chains on 2 CPU cores",
    )
    parser.add_argument("--reference-warmup", type=int, help="default 2000 (1000 with --quick)")
    parser.add_argument(
        "--reference-samples",
        type=int,
        help="NUTS draws per chain for references; default 10000 (2000 --quick)",
    )
    parser.add_argument(
        "--reference-cache",
        type=Path,
        metavar="FILE",
        help="JSON file to read and extend with reference moments",
    )
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument(
        "--adapt-particles",
        action="store_true",
        help="FlowMCKernel(adapt_num_particles=True): fewer particles after warm-up",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    iterations = QUICK_ITERATIONS if args.quick else 1000
    args.num_warmup = args.num_warmup or iterations
    args.num_samples = args.num_samples or iterations
    args.reference_warmup = args.reference_warmup or (1000 if args.quick else 2000)
    args.reference_samples = args.reference_samples or (2000 if args.quick else 10000)
    names = args.posteriors or suite_names()
    if any(name in POSTERIORDB for name in names) and not args.posteriordb.is_dir():
        parser.error(
            f"posteriordb data folder {args.posteriordb} not found: pass --posteriordb DIR "
            "(the folder holding eight_schools.json.zip, garch.json.zip, ...)."
        )
    args.posteriors = names
    return args


def main() -> None:
    args = parse_args()
    suite = build_suite(args.posteriordb, args.posteriors)
    cache_path = args.reference_cache
    cache = json.loads(cache_path.read_text()) if cache_path and cache_path.is_file() else {}
    print(
        f"numpyro_ebm {_kernel_version()}; FlowMCKernel defaults, {args.num_walkers} walkers; "
        f"NUTS defaults, {NUTS_CHAINS} chains ({args.nuts_chain_method}); both "
        f"{args.num_warmup} warm-up + {args.num_samples} draws; seed {args.seed}; "
        f"{jax.devices()[0].platform}",
        flush=True,
    )
    rows = []
    for posterior in suite:
        # A key per posterior that does not depend on which others run.
        key = jax.random.fold_in(run_key(args.seed), zlib.crc32(posterior.name.encode()) % 2**31)
        rows.append(evaluate(posterior, key, args, cache))
        print_detail(rows[-1])
        if cache_path:
            cache_path.write_text(json.dumps(cache, indent=1))
    print(
        f"\nGoals (issue 7): FlowMCKernel within {GOAL_ERROR} reference sd of every mean "
        f"(and |w − 2/3| ≤ {GOAL_WEIGHT_ERROR} on the two-mode targets); wall time ≤ "
        f"{GOAL_TIME_RATIO}× NUTS's. Met by {sum(r['accurate'] for r in rows)}/{len(rows)} "
        f"and {sum(r['fast'] for r in rows)}/{len(rows)} posteriors.\n"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
