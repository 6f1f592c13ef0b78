"""The ``numpyro-ebm`` command line's arguments: the parser and the options' settings.

The commands themselves are in :mod:`numpyro_ebm.cli`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CONFIG_OPTIONS", "build_parser", "integer_at_least", "parse_set"]

# Command-line option -> setting of the run or of its objective. Options left out keep the
# default (or, with --resume, the saved setting).
CONFIG_OPTIONS = {
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


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum`` (anything else is a usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _run_dir_command(commands: Any, name: str, **texts: str) -> argparse.ArgumentParser:
    """A command on a trained run: its ``DIR`` argument and ``--seed``."""
    parser = commands.add_parser(name, **texts)
    parser.add_argument("run_dir", metavar="DIR", help="run directory of `numpyro-ebm train`")
    parser.add_argument("--seed", type=integer_at_least(0), default=0, help="seed (default 0)")
    return parser


def build_parser() -> argparse.ArgumentParser:
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

    sample = _run_dir_command(
        commands,
        "sample",
        help="sample a trained model with FlowMCKernel",
        description="Sample DIR's model; write DIR/samples.npy and DIR/summary.csv.",
    )
    sample.add_argument(
        "--num-samples", type=integer_at_least(1), required=True, help="draws per chain"
    )
    sample.add_argument(
        "--num-chains", type=integer_at_least(2), default=64, help="chains (default 64)"
    )
    sample.add_argument(
        "--num-warmup", type=integer_at_least(0), default=200, help="warm-up (default 200)"
    )
    sample.add_argument("--out", metavar="OUT", help="write here instead of DIR")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    evaluate = _run_dir_command(
        commands,
        "evaluate",
        help="held-out log-likelihood of a trained model",
        description="Estimate log Z of DIR's model and the mean log-likelihood of held-out data.",
    )
    evaluate.add_argument(
        "--data",
        required=True,
        help=".npy/.csv file (raw units), or a built-in: a real one's test split, or exact draws",
    )
    evaluate.add_argument("--out", metavar="FILE", help="also write the results as JSON")
    evaluate.add_argument(
        "--num-samples",
        type=integer_at_least(2),
        default=16_384,
        help="importance draws (default 16384)",
    )
    return parser


def parse_set(assignments: Sequence[str]) -> dict[str, Any]:
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
