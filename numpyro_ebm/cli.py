"""The ``numpyro-ebm`` command line: train a tilted EBM on data, and sample a trained one.

Usage::

    numpyro-ebm train DATA --out DIR [--objective pcd|cd|short-run|dsm|ssm|nce|coopflow]
                       [--sampler flowmc|ula|mala|nt] [--epochs N] [--seed S] [--resume]
                       [--fast] [--steps-per-epoch N] [--walkers W] [--batch-size B] [--lr LR]
                       [--flow-lr LR] [--l2 L2] [--checkpoint-every N] [--set NAME=VALUE]
                       [--energy mlp|conv] [--width W] [--depth D] ...
    numpyro-ebm sample DIR --num-samples N [--num-chains C] [--num-warmup N] [--seed S]
    numpyro-ebm evaluate DIR --data DATA [--out FILE.json] [--num-samples N] [--seed S]

``train`` accepts a built-in dataset name (``two-modes-2to1``, ``eight-gaussians``, ``rings``,
``four-modes``, ``gmm-16``, ``gmm-32``, ``gmm-64``; with the ``[real]`` extra ``digits``,
``digits-2to1``, ``breast-cancer``, ``wine``, ``patches``) or a ``.npy`` / ``.csv`` file of shape
``(n, d)``, standardised on its training split (see ``evaluate``). ``--objective`` picks the
training objective (``pcd``, the default, is [A]'s
flow-assisted contrastive maximum likelihood); an option that the objective does not have is an
error, and ``--set NAME=VALUE`` sets any of its settings. It writes to ``DIR``:
``settings.json``, ``checkpoints/``, the trained model (``model.eqx``, ``model.json``,
``negatives.npy`` where the objective keeps samples), ``report.json`` (metrics, settings,
timings, history) and PNG figures (``energy.png`` in 2-D, ``samples.png``,
``mode_weights.png``, ``training.png``). ``sample`` writes ``samples.npy`` and ``summary.csv``
(ArviZ) to ``DIR``, in the units of the training data. ``evaluate`` prints and writes (JSON) the
held-out log-likelihood of ``DATA`` (a file in the training data's raw units, or a built-in's
name: a real one's test split, or 2000 fresh exact draws of one with a known density, which
adds their exact log-likelihood and the KL divergence from the data to the model) with log Z,
its standard error and the importance ESS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from numpyro_ebm._cli_parser import CONFIG_OPTIONS, build_parser, parse_set

__all__ = ["FAST_SETTINGS", "main", "summary_line"]

#: Settings of ``--fast``: a tiny run for CI and tests (seconds, not minutes); those that the
#: chosen objective does not have are skipped.
FAST_SETTINGS: dict[str, Any] = dict(
    num_epochs=2,
    steps_per_epoch=10,
    num_walkers=64,
    batch_size=64,
    energy_width=16,
    energy_depth=2,
    num_particles=8,
    num_local_steps=2,
    fit_batch_size=64,
    num_data=2000,
    grid_points=40,
)
#: Metrics the ``train`` command prints, those the dataset has: mode weights and density error
#: where they are known, held-out and validation log-likelihood where there are such points,
#: the last loss always.
SUMMARY_METRICS = (
    "top_right_weight",
    "zone_weight_mse",
    "median_sq_log_density_error",
    "test_heldout_log_likelihood",
    "final_val_log_likelihood",
    "negatives_max_rhat",
    "final_loss",
)
#: Evaluation settings (see :func:`numpyro_ebm.training.evaluate`), normal and ``--fast``.
_EVALUATION = dict(num_chain_steps=200, num_flowmc_samples=200)
_FAST_EVALUATION = dict(num_chain_steps=20, num_flowmc_samples=20)


def _train_config(args: argparse.Namespace):
    from numpyro_ebm.training import TrainConfig
    from numpyro_ebm.training.run_dir import SETTINGS_FILE
    from numpyro_ebm.training.run_files import read_run_settings

    settings_path = Path(args.out) / SETTINGS_FILE
    if args.resume and not Path(args.out).is_dir():  # a misspelt path: not a whole new run
        raise ValueError(
            f"expected --out to name an earlier run to resume, got {args.out!r}, "
            "which does not exist"
        )
    if args.resume and settings_path.exists():
        _, config = read_run_settings(settings_path)
        if args.objective is not None and args.objective != config.objective.name:
            raise ValueError(
                f"expected --objective {config.objective.name} to resume {args.out}, "
                f"got {args.objective}"
            )
    else:
        from numpyro_ebm.datasets import get_dataset

        dim = get_dataset(args.data).dim
        config = TrainConfig.for_dimension(dim, objective=args.objective or "pcd")
        if args.fast:
            config = config.with_settings(strict=False, **FAST_SETTINGS)
    given = {
        field: getattr(args, option)
        for option, field in CONFIG_OPTIONS.items()
        if getattr(args, option) is not None
    }
    return config.with_settings(**given, **parse_set(args.set))


def _has_fast_settings(config) -> bool:
    """Whether a run's settings are ``--fast``'s: a resumed ``--fast`` run is evaluated as one.

    Compares the trainer's own settings of :data:`FAST_SETTINGS` (not ``num_epochs``, which a
    resumed run may raise).

    Example:
        >>> from numpyro_ebm.training import TrainConfig
        >>> _has_fast_settings(TrainConfig().with_settings(strict=False, **FAST_SETTINGS))
        True
        >>> _has_fast_settings(TrainConfig())
        False
    """
    saved = config.to_dict()
    own = {name: value for name, value in FAST_SETTINGS.items() if name in saved}
    return all(saved[name] == value for name, value in own.items() if name != "num_epochs")


def _check_writable(path: str, option: str, *, directory: bool) -> Path:
    """Fail before any work if ``path`` cannot be written as a directory (or as a file).

    Raises:
        ValueError: Naming the option, the path and what is in the way.
    """
    path = Path(path)
    kind = "directory" if directory else "file"
    if path.exists() and path.is_dir() != directory:
        raise ValueError(f"expected {option} to name a {kind}, got {str(path)!r}, which is not")
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if existing != path and not existing.is_dir():
        raise ValueError(
            f"expected {option} to name a {kind} that can be created, got {str(path)!r}: "
            f"{str(existing)!r} is a file"
        )
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
        raise ValueError(f"expected {option} to be writable, got {str(path)!r}, which is not")
    return path


def _run_train(args: argparse.Namespace) -> int:
    from numpyro_ebm.training import evaluate, save_result, train
    from numpyro_ebm.training.checkpoint import write_json
    from numpyro_ebm.training.figures import write_figures

    start = time.perf_counter()
    out = _check_writable(args.out, "--out", directory=True)
    config = _train_config(args)
    fast = args.fast or (args.resume and _has_fast_settings(config))
    result = train(
        args.data, config, out_dir=out, resume=args.resume, progress_bar=not args.no_progress
    )
    trainer = result.trainer
    if result.best_state is not None:  # the model kept is the best validation's
        best = result.best_state
        result = result._replace(state=best, energy=trainer.energy(best), flow=trainer.flow(best))
    evaluation = _FAST_EVALUATION if fast else _EVALUATION
    metrics = evaluate(result, **evaluation, progress_bar=not args.no_progress)
    save_result(out, result)

    plots_start = time.perf_counter()
    figures = write_figures(result, out)
    plots_s = time.perf_counter() - plots_start

    report = {
        "command": "train",
        "dataset": trainer.dataset_spec,
        "settings": trainer.settings(),
        "fast": bool(fast),
        "metrics": metrics,
        "timings": {
            **result.timings,
            "evaluation_s": metrics["evaluation_s"],
            "plots_s": plots_s,
            "total_s": time.perf_counter() - start,
        },
        "history": result.history,
        "figures": {name: path.name for name, path in figures.items()},
    }
    write_json(out / "report.json", report)
    summary = summary_line(metrics)
    print(f"trained {_method_name(config.objective)} EBM on {trainer.dataset_spec}: {summary}")
    print(f"wrote {out / 'report.json'} in {report['timings']['total_s']:.1f} s")
    return 0


def summary_line(metrics: dict[str, Any]) -> str:
    """The metrics of :data:`SUMMARY_METRICS` that a run has, as ``name value, ...``.

    Example:
        >>> summary_line({"final_loss": -0.0123, "negatives_max_rhat": None, "dim": 2})
        'final_loss -0.0123'
        >>> summary_line({"final_val_log_likelihood": -2.929, "final_val_importance_ess": 2.47,
        ...               "final_val_draws": 4096})
        'final_val_log_likelihood -2.929 (untrusted: ESS 2 of 4096 draws)'
    """
    from numpyro_ebm.training.validation import untrusted_note

    # The final validation's own fields, without their prefix, say whether it is trusted.
    final_validation = {
        name.removeprefix("final_"): value
        for name, value in metrics.items()
        if name.startswith("final_val_")
    }
    return ", ".join(
        f"{name} {metrics[name]:.4g}"
        + (untrusted_note(final_validation) if name == "final_val_log_likelihood" else "")
        for name in SUMMARY_METRICS
        if isinstance(metrics.get(name), int | float) and not isinstance(metrics[name], bool)
    )


def _method_name(objective) -> str:
    """``pcd-flowmc``, ``pcd-ula``, ... for ``pcd``; the objective's name otherwise."""
    sampler = getattr(objective, "sampler", None)
    return objective.name if sampler is None else f"{objective.name}-{sampler}"


def _check_rebuildable(run_dir: str, python_call: str) -> None:
    """Refuse a run whose energy is a network of the user's: only Python can rebuild it.

    Raises:
        ValueError: Naming the class and the Python call that takes its template.
    """
    from numpyro_ebm.training.model_io import MODEL_SETTINGS_FILE
    from numpyro_ebm.training.run_files import read_model_settings

    path = Path(run_dir) / MODEL_SETTINGS_FILE
    if not path.is_file():  # loading says what is missing
        return
    spec = read_model_settings(path)["energy"]
    if spec["type"] == "custom":
        raise ValueError(
            f"{path}: expected an energy network the command line can rebuild (mlp, conv), got "
            f"one of your own ({spec['class']}); in Python: numpyro_ebm.training.{python_call}"
            f"({str(run_dir)!r}, ..., energy=<a fresh instance of it>)"
        )


def _run_sample(args: argparse.Namespace) -> int:
    from numpyro_ebm.training import sample_run

    _check_rebuildable(args.run_dir, "sample_run")
    if args.out is not None:  # checked before the run, not after it
        _check_writable(args.out, "--out", directory=True)
    samples_path, summary_path = sample_run(
        args.run_dir,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        num_warmup=args.num_warmup,
        seed=args.seed,
        out_dir=args.out,
        progress_bar=not args.no_progress,
    )
    print(f"wrote {samples_path} and {summary_path}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from numpyro_ebm.training import evaluate_run
    from numpyro_ebm.training.checkpoint import json_text, write_json

    _check_rebuildable(args.run_dir, "evaluate_run")
    if args.out:
        _check_writable(args.out, "--out", directory=False)
    metrics = evaluate_run(args.run_dir, args.data, num_samples=args.num_samples, seed=args.seed)
    result = {"command": "evaluate", "run_dir": str(args.run_dir), "data": args.data, **metrics}
    if args.out:
        write_json(Path(args.out), result)
    print(json_text(result))  # as the file: strict JSON
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's preemption or time limit), handled as Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Raise :class:`_Terminated` on SIGTERM while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``numpyro-ebm`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0 on success, 2 for bad input or an unusable path (reported on
        stderr), 130 when interrupted (Ctrl-C) and 143 when terminated (SIGTERM); a training
        run interrupted either way resumes from its last checkpoint.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {"train": _run_train, "sample": _run_sample, "evaluate": _run_evaluate}
        with _sigterm_as_interrupt():
            return commands[args.command](args)
    except (ValueError, OSError) as error:  # bad input, or a path that cannot be read/written
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, _Terminated)
        hint = " (continue with --resume)" if args.command == "train" else ""
        what = "terminated" if terminated else "interrupted"
        print(f"{parser.prog} {args.command}: {what}{hint}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
