"""The trainer's progress: a tqdm bar per epoch and the per-epoch history of metric means."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from numpyro_ebm._warnings import warn_user
from numpyro_ebm.training.validation import untrusted_note

__all__ = ["EpochProgress", "chunk_size", "postfix", "runaway_message"]

#: The progress bar advances at least this many times per epoch (when the step count allows).
_PROGRESS_UPDATES_PER_EPOCH = 10

#: A loss beyond this magnitude means the energy is running away (the 2-D experiments' losses
#: stay within ±10; a runaway energy passes 1e6 within a few hundred steps and then overflows).
RUNAWAY_LOSS = 1e6

#: Metrics the progress bar shows, where the objective has them: name -> label.
_POSTFIX_METRICS = {
    "loss": "loss",
    "accept_prob": "acc",
    "global_accept_prob": "glob",
    "negatives_rhat": "R̂",
    "val_log_likelihood": "val LL",
}


def chunk_size(steps_per_epoch: int, checkpoint_every: int) -> int:
    """Steps per jitted call: divides epochs and checkpoint intervals, ≥ 10 calls per epoch.

    Every call then runs the same number of steps, so there is one compilation and a resumed
    run replays exactly the program of an uninterrupted one.

    Example:
        >>> chunk_size(200, 200), chunk_size(200, 50), chunk_size(7, 7)
        (20, 10, 1)
    """
    number = math.gcd(steps_per_epoch, checkpoint_every)
    bound = max(1, steps_per_epoch // _PROGRESS_UPDATES_PER_EPOCH)
    return max(d for d in range(1, max(1, min(number, bound)) + 1) if number % d == 0)


def postfix(values: dict[str, Any]) -> str:
    """The bar's text: loss, acceptances and mode weights, those of ``values`` that exist.

    A validation whose log Z rests on too few effective draws to be trusted (it never counts
    as the best, :func:`~numpyro_ebm.training.validation.trusted_validation`) says so.

    Example:
        >>> postfix({"loss": 0.12345, "accept_prob": 0.5, "mode_weights": [0.6, 0.4]})
        'loss 0.123, acc 0.50, w 0.60/0.40'
        >>> postfix({"val_log_likelihood": -14.7, "val_importance_ess": 3.9, "val_draws": 256})
        'val LL -14.70 (untrusted: ESS 4 of 256 draws)'
    """
    text = ", ".join(
        f"{label} {values[name]:.{3 if name == 'loss' else 2}f}"
        for name, label in _POSTFIX_METRICS.items()
        if name in values
    )
    text += untrusted_note(values)
    if "mode_weights" in values:
        text += ", w " + "/".join(f"{w:.2f}" for w in values["mode_weights"])
    return text


def runaway_message(epoch: int, losses: list[float]) -> str | None:
    """What to tell the user when an epoch's losses show a runaway energy, else ``None``.

    A NaN loss has a second cause, named first: a network undefined on part of the space.

    Example:
        >>> runaway_message(3, [0.1, float("inf")])[:40]
        'epoch 3: the loss was not finite at 1 of'
        >>> runaway_message(3, [0.1, float("nan")])[:35]
        'epoch 3: the loss was NaN at 1 of 2'
        >>> runaway_message(3, [0.1, -0.2]) is None
        True
    """
    bad = sum(not (math.isfinite(v) and abs(v) <= RUNAWAY_LOSS) for v in losses)
    if not bad:
        return None
    remedy = (
        "An L2 penalty on the energies (`l2_penalty=0.1`, where the objective has one) or a "
        "smaller `learning_rate` usually keeps it bounded."
    )
    nan = sum(math.isnan(v) for v in losses)
    if nan:
        return (
            f"epoch {epoch}: the loss was NaN at {nan} of {len(losses)} steps. Either the "
            "energy or its gradient is NaN at some data points or negatives (an operation "
            "undefined there, such as the log or square root of a negative number, or 0/0: "
            "evaluate the network on the data to find them), and the parameters are then NaN "
            f"for good; or the energy is running away to infinity. {remedy}"
        )
    return (
        f"epoch {epoch}: the loss was not finite at {bad} of {len(losses)} steps, or beyond "
        f"{RUNAWAY_LOSS:g} in magnitude: the energy is running away. {remedy}"
    )


class EpochProgress:
    """Collects a run's step metrics into epoch means, with a tqdm bar per epoch.

    Args:
        steps_per_epoch: Steps of an epoch.
        num_epochs: Epochs of the run (for the bar's label).
        history: Entries of the epochs already done (a resumed run's).
        partial: Step metrics of the unfinished epoch (a resumed run's).
        enabled: Show the bars.
    """

    def __init__(
        self,
        steps_per_epoch: int,
        num_epochs: int,
        history: list[dict[str, Any]],
        partial: dict[str, list[float]],
        enabled: bool = True,
    ):
        self.steps_per_epoch = steps_per_epoch
        self.num_epochs = num_epochs
        self.history = history
        self.partial = partial
        self.enabled = enabled
        self._bar = None
        self._epoch_start = time.perf_counter()
        self._warned = False

    def add(self, step: int, metrics: dict[str, np.ndarray], num_steps: int) -> bool:
        """Record ``num_steps`` steps' metrics that end at ``step``.

        Returns:
            Whether ``step`` ends an epoch (then call :meth:`end_epoch`).
        """
        if self._bar is None:
            self._bar = tqdm(
                total=self.steps_per_epoch,
                initial=(step - num_steps) % self.steps_per_epoch,
                desc=self._description(step - num_steps),
                disable=not self.enabled,
                leave=True,
            )
            self._epoch_start = time.perf_counter()
        for name, values in metrics.items():
            self.partial.setdefault(name, []).extend(float(v) for v in values)
        self._bar.update(num_steps)
        means = {name: float(np.mean(values)) for name, values in self.partial.items()}
        self._bar.set_postfix_str(postfix(means), refresh=False)
        return step % self.steps_per_epoch == 0

    def _description(self, step: int) -> str:
        """``epoch 3/10`` and, once an epoch has been timed, the whole run's ETA."""
        epoch = step // self.steps_per_epoch + 1
        text = f"epoch {epoch}/{self.num_epochs}"
        times = [entry["time_s"] for entry in self.history if "time_s" in entry]
        if times:
            seconds = round(float(np.mean(times)) * (self.num_epochs - epoch + 1))
            text += f" (run ETA {seconds // 60}:{seconds % 60:02d})"
        return text

    def end_epoch(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Close the epoch ending at ``step``: append its entry to the history and return it.

        The entry holds ``epoch``, ``step``, the epoch mean of each metric (over its finite
        values), ``extra`` (e.g. ``mode_weights``) and ``time_s``. The first epoch whose loss
        shows a runaway energy (:func:`runaway_message`) gives a warning.
        """
        entry: dict[str, Any] = {"epoch": step // self.steps_per_epoch, "step": step}
        message = runaway_message(entry["epoch"], self.partial.get("loss", []))
        if message is not None and not self._warned:
            self._warned = True
            warn_user(message, RuntimeWarning)
        for name, values in self.partial.items():
            finite = [v for v in values if math.isfinite(v)]
            entry[name] = float(np.mean(finite)) if finite else float("nan")
        entry.update(extra)
        entry["time_s"] = time.perf_counter() - self._epoch_start
        self.history.append(entry)
        self.partial = {}
        if self._bar is not None:
            self._bar.set_postfix_str(postfix(entry))
            self.close()
        return entry

    def close(self) -> None:
        """Close the bar of an unfinished epoch."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
