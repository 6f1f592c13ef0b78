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
name for its test split) with log Z, its standard error and the importance ESS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["FAST_SETTINGS", "main"]

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
#: Evaluation settings (see :func:`numpyro_ebm.training.evaluate`), normal and ``--fast``.
_EVALUATION = dict(num_chain_steps=200, num_flowmc_samples=200)
_FAST_EVALUATION = dict(num_chain_steps=20, num_flowmc_samples=20)

# Command-line option -> setting of the run or of its objective. Options left out keep the
# default (or, with --resume, the saved setting).
_CONFIG_OPTIONS = {
    "sampler": "sampler",
    "epochs": "num_epochs",
    "seed": "seed",
    "steps_per_epoch": "steps_per_epoch",
    "walkers": "num_walkers",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "flow_lr": "flow_learning_rate",
    "l2": "l2_penalty",
    "ema_decay": "ema_decay",
    "base_scale": "base_scale",
    "particles": "num_particles",
    "local_steps": "num_local_steps",
    "rounds": "num_rounds",
    "global_move": "global_move",
    "energy": "energy",
    "width": "energy_width",
    "depth": "energy_depth",
    "checkpoint_every": "checkpoint_every",
}


def _parser() -> argparse.ArgumentParser:
    from numpyro_ebm.training.negatives import NEGATIVE_SAMPLERS
    from numpyro_ebm.training.objectives import OBJECTIVES

    parser = argparse.ArgumentParser(
        prog="numpyro-ebm",
        description="Flow-assisted training and sampling of energy-based models (NumPyro).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a tilted EBM on a dataset",
        description="Train p(x) ∝ exp(-E(x)) ρ(x) with persistent negatives and write DIR.",
    )
    train.add_argument("data", metavar="DATA", help="built-in dataset name, or .npy/.csv file")
    train.add_argument("--out", required=True, metavar="DIR", help="run directory")
    train.add_argument(
        "--objective", choices=tuple(OBJECTIVES), help="training objective (default pcd)"
    )
    train.add_argument(
        "--sampler", choices=NEGATIVE_SAMPLERS, help="pcd's negatives (default flowmc)"
    )
    train.add_argument("--epochs", type=int, help="epochs (default 10; 20 above 2-D)")
    train.add_argument("--seed", type=int, help="seed (default 0)")
    train.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in DIR"
    )
    train.add_argument("--fast", action="store_true", help="tiny run for CI and tests")
    train.add_argument("--steps-per-epoch", type=int, help="EBM steps per epoch (default 200)")
    train.add_argument(
        "--walkers", type=int, help="persistent walkers (default 512; 128 above 2-D)"
    )
    train.add_argument(
        "--batch-size", type=int, help="data points per step (default 256; 128 above 2-D)"
    )
    train.add_argument("--lr", type=float, help="energy learning rate (default 1e-3)")
    train.add_argument("--flow-lr", type=float, help="flow learning rate (default 1e-3)")
    train.add_argument("--l2", type=float, help="L2 penalty on energies (default 0)")
    train.add_argument(
        "--ema-decay", type=float, help="moving average of the energy (default 0.995; 0: off)"
    )
    train.add_argument("--base-scale", type=float, help="σ of ρ (default: data RMS)")
    train.add_argument("--particles", type=int, help="i-SIR particles (default 32; 16 above 2-D)")
    train.add_argument(
        "--local-steps", type=int, help="MALA/ULA steps per round (default 5; 3 above 2-D)"
    )
    train.add_argument("--rounds", type=int, help="flowMC rounds per EBM step (default 1)")
    train.add_argument("--global-move", choices=("isir", "imh"), help="flow move (default isir)")
    train.add_argument(
        "--energy",
        choices=("mlp", "conv"),
        help="energy network (default mlp; conv: square images)",
    )
    train.add_argument(
        "--width", type=int, help="mlp energy hidden width (default 64; 128 above 2-D)"
    )
    train.add_argument("--depth", type=int, help="mlp energy hidden layers (default 3)")
    train.add_argument(
        "--checkpoint-every", type=int, help="steps between checkpoints (default: every epoch)"
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any setting of the run or its objective (VALUE read as JSON, else a string)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    sample = commands.add_parser(
        "sample",
        help="sample a trained model with FlowMCKernel",
        description="Sample DIR's model; write DIR/samples.npy and DIR/summary.csv.",
    )
    sample.add_argument("run_dir", metavar="DIR", help="run directory of `numpyro-ebm train`")
    sample.add_argument("--num-samples", type=int, required=True, help="draws per chain")
    sample.add_argument("--num-chains", type=int, default=64, help="chains (default 64)")
    sample.add_argument("--num-warmup", type=int, default=200, help="warm-up (default 200)")
    sample.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    sample.add_argument("--out", metavar="OUT", help="write here instead of DIR")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    evaluate = commands.add_parser(
        "evaluate",
        help="held-out log-likelihood of a trained model",
        description="Estimate log Z of DIR's model and the mean log-likelihood of held-out data.",
    )
    evaluate.add_argument("run_dir", metavar="DIR", help="run directory of `numpyro-ebm train`")
    evaluate.add_argument(
        "--data", required=True, help=".npy/.csv file (raw units), or a built-in's test split"
    )
    evaluate.add_argument("--out", metavar="FILE", help="also write the results as JSON")
    evaluate.add_argument(
        "--num-samples", type=int, default=16_384, help="importance draws (default 16384)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    return parser


def _parse_set(assignments: Sequence[str]) -> dict[str, Any]:
    """``["name=value", ...]`` -> ``{name: value}``; a value is JSON if it parses, else text."""
    settings = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals or not name:
            raise ValueError(f"expected --set NAME=VALUE, got {assignment!r}")
        try:
            settings[name.replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            settings[name.replace("-", "_")] = text
    return settings


def _train_config(args: argparse.Namespace):
    from numpyro_ebm.training import TrainConfig
    from numpyro_ebm.training.run_dir import SETTINGS_FILE
    from numpyro_ebm.training.run_files import read_run_settings

    settings_path = Path(args.out) / SETTINGS_FILE
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
        for option, field in _CONFIG_OPTIONS.items()
        if getattr(args, option) is not None
    }
    return config.with_settings(**given, **_parse_set(args.set))


def _run_train(args: argparse.Namespace) -> int:
    from numpyro_ebm.training import evaluate, save_model, train
    from numpyro_ebm.training.checkpoint import write_json
    from numpyro_ebm.training.figures import write_figures

    start = time.perf_counter()
    out = Path(args.out)
    config = _train_config(args)
    result = train(
        args.data, config, out_dir=out, resume=args.resume, progress_bar=not args.no_progress
    )
    trainer = result.trainer
    if result.best_state is not None:  # the model kept is the best validation's
        best = result.best_state
        result = result._replace(state=best, energy=trainer.energy(best), flow=trainer.flow(best))
    evaluation = _FAST_EVALUATION if args.fast else _EVALUATION
    metrics = evaluate(result, **evaluation, progress_bar=not args.no_progress)
    negatives = trainer.negatives(result.state)
    save_model(
        out,
        result.energy,
        trainer.base_scale,
        flow=result.flow,
        negatives=negatives,
        extra={
            "dataset": trainer.dataset_spec,
            "objective": config.objective.to_dict(),
            "preprocessing": trainer.preprocessing.to_dict(),
        },
    )

    plots_start = time.perf_counter()
    figures = write_figures(result, out)
    plots_s = time.perf_counter() - plots_start

    report = {
        "command": "train",
        "dataset": trainer.dataset_spec,
        "settings": trainer.settings(),
        "fast": bool(args.fast),
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
    summary = ", ".join(
        f"{name} {metrics[name]:.4g}"
        for name in (
            "top_right_weight",
            "zone_weight_mse",
            "median_sq_log_density_error",
            "negatives_max_rhat",
        )
        if name in metrics
    )
    print(f"trained {_method_name(config.objective)} EBM on {trainer.dataset_spec}: {summary}")
    print(f"wrote {out / 'report.json'} in {report['timings']['total_s']:.1f} s")
    return 0


def _method_name(objective) -> str:
    """``pcd-flowmc``, ``pcd-ula``, ... for ``pcd``; the objective's name otherwise."""
    sampler = getattr(objective, "sampler", None)
    return objective.name if sampler is None else f"{objective.name}-{sampler}"


def _run_sample(args: argparse.Namespace) -> int:
    from numpyro_ebm.training import sample_run

    for name in ("num_samples", "num_chains"):
        if getattr(args, name) < (2 if name == "num_chains" else 1):
            raise ValueError(
                f"expected --{name.replace('_', '-')} >= {2 if name == 'num_chains' else 1}, "
                f"got {getattr(args, name)}"
            )
    if args.num_warmup < 0:
        raise ValueError(f"expected --num-warmup >= 0, got {args.num_warmup}")
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
    import jax

    from numpyro_ebm.datasets import get_dataset
    from numpyro_ebm.training import load_model
    from numpyro_ebm.training.checkpoint import write_json
    from numpyro_ebm.training.heldout import heldout_metrics
    from numpyro_ebm.training.model_io import saved_preprocessing

    model = load_model(args.run_dir)
    dataset = get_dataset(args.data)
    points = dataset.data if dataset.test_data is None else dataset.test_data
    if points is None:
        raise ValueError(
            f"expected held-out points: a data file or a built-in with a test split, got "
            f"{args.data!r}, which has none"
        )
    preprocessing = saved_preprocessing(model.settings)
    metrics = heldout_metrics(
        jax.random.key(args.seed),
        model.energy,
        model.base_scale,
        model.flow,
        preprocessing,
        points,
        num_samples=args.num_samples,
    )
    result = {"command": "evaluate", "run_dir": str(args.run_dir), "data": args.data, **metrics}
    if args.out:
        write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``numpyro-ebm`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0 on success, 2 for bad input (reported on stderr).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        commands = {"train": _run_train, "sample": _run_sample, "evaluate": _run_evaluate}
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
