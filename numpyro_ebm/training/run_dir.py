"""Writing a training run directory: ``settings.json`` and ``checkpoints/``.

A run directory holds the settings of the run and its latest checkpoints (a state in
``step_<n>.eqx`` and, written last, its history in ``step_<n>.json``: a checkpoint counts only
once both exist). Reading is in :mod:`~numpyro_ebm.training.run_files`, which checks every file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from numpyro_ebm._checks import flag
from numpyro_ebm._warnings import warn_user
from numpyro_ebm.training.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
    write_json,
)
from numpyro_ebm.training.mesh import is_main_process
from numpyro_ebm.training.run_files import (
    read_checkpoint_meta,
    read_run_settings,
    read_traced_paths,
)

__all__ = [
    "BEST_CHECKPOINT_DIR",
    "CHECKPOINT_DIR",
    "RUN_OUTPUTS",
    "SETTINGS_FILE",
    "RunStart",
    "check_epochs_to_reach",
    "check_saved_settings",
    "open_run",
    "clear_run",
    "restore_checkpoint",
    "save_training_checkpoint",
]

#: Name of a run directory's settings file and checkpoint folder.
SETTINGS_FILE = "settings.json"
CHECKPOINT_DIR = "checkpoints"
#: Where the state of the best validation so far is kept.
BEST_CHECKPOINT_DIR = "best_checkpoint"
#: Settings that may differ between a run and its resumption (they do not change any step).
#: ``devices`` among them: a checkpoint holds whole arrays, re-split on the resuming mesh.
RESUMABLE_CHANGES = ("num_epochs", "patience", "devices")
#: What the end of a run (``numpyro-ebm train``, ``sample``) writes beside the checkpoints: the
#: trained model first (``model.json`` says a model is there), its report, figures and draws.
#: A new run removes them, so that an interrupted new run is never read as the earlier model.
RUN_OUTPUTS = (
    "model.json",
    "model.eqx",
    "negatives.npy",
    "report.json",
    "energy.png",
    "samples.png",
    "images.png",
    "mode_weights.png",
    "training.png",
    "samples.npy",
    "summary.csv",
)
#: Settings of a run's data that a resumed run must share: the same path with other data in it
#: gives another preprocessing, σ or dimension.
_DATA_SETTINGS = ("dataset", "dim", "base_scale", "preprocessing")
#: Settings that choose the training points, from which σ and the preprocessing are computed.
_SPLIT_SETTINGS = frozenset({"seed", "num_data", "validation_fraction", "preprocess"})


class RunStart(NamedTuple):
    """Where a run starts: a new run's state, or what its latest checkpoint holds.

    Attributes:
        state: The training state.
        history: Per-epoch entries so far.
        partial: Per-step metrics of the unfinished epoch.
        paths: The unfinished epoch's traced negatives (chunks of ``(steps, walkers, d)``),
            from which its ``negatives_rhat`` is computed.
        best_state: The state of the best validation so far, or ``None``.
    """

    state: Any
    history: list[dict[str, Any]]
    partial: dict[str, list[float]]
    paths: list[np.ndarray]
    best_state: Any = None


def _paths_file(path: Path) -> Path:
    """Where the unfinished epoch's traced negatives of checkpoint ``path`` are kept."""
    return path.with_suffix(".paths.npy")


def _remove_checkpoint(path: Path) -> None:
    """Remove a checkpoint's files, its JSON (what makes it count) first."""
    for file in (path.with_suffix(".json"), _paths_file(path), path):
        file.unlink(missing_ok=True)


def check_saved_settings(out_dir: Path, current: dict[str, Any]) -> None:
    """Check that the settings saved in ``out_dir`` allow resuming with ``current``.

    Args:
        out_dir: The run directory.
        current: The settings of the run about to resume (``Trainer.settings()``).

    Raises:
        ValueError: Naming each setting that differs (other than :data:`RESUMABLE_CHANGES`).
    """
    path = out_dir / SETTINGS_FILE
    if not path.exists():
        if checkpoint_paths(out_dir / CHECKPOINT_DIR):
            warn_user(
                f"no {SETTINGS_FILE} in {str(out_dir)!r}: the given settings cannot be "
                "checked against the run's; resuming only if its checkpoint fits them",
            )
        return
    saved, saved_config = read_run_settings(path)
    # Compare through TrainConfig so that settings written by an older release still match.
    saved_settings = saved_config.to_dict()
    given = current["config"]
    changed = [
        name
        for name in given
        if name not in RESUMABLE_CHANGES and saved_settings.get(name) != given[name]
    ]
    differences = [f"{k}: saved {saved_settings.get(k)!r}, given {given[k]!r}" for k in changed]
    # Another split of the data gives another σ and preprocessing: name only its cause.
    split_changed = not _SPLIT_SETTINGS.isdisjoint(changed)
    for name in (*_DATA_SETTINGS, "energy"):  # runs of earlier releases record fewer
        derived = split_changed and name in ("base_scale", "preprocessing")
        moved = name == "dataset" and _same_file_elsewhere(saved.get(name), current[name])
        if name in saved and saved[name] != current[name] and not (derived or moved):
            differences.append(_difference(name, saved[name], current[name]))
    if differences:
        raise ValueError(
            f"expected the settings saved in {str(path)!r} to resume, got different ones: "
            + "; ".join(differences)
        )


def _same_file_elsewhere(saved: Any, given: Any) -> bool:
    """Whether ``given`` names an existing data file of the same name as ``saved``'s.

    A job requeued with an absolute path, or run from another directory, names the same file
    otherwise; other data behind that name still differs in σ and the preprocessing.
    """
    if not (isinstance(saved, str) and isinstance(given, str)):
        return False
    return Path(given).is_file() and Path(saved).name == Path(given).name


def _difference(name: str, saved: Any, given: Any, limit: int = 120) -> str:
    """``"<name>: saved <value>, given <value>"``, or a sentence for long values.

    A preprocessing lists d numbers twice: printed whole, two of them hide where they differ.
    """
    texts = repr(saved), repr(given)
    if max(map(len, texts)) <= limit:
        return f"{name}: saved {texts[0]}, given {texts[1]}"
    return f"{name}: saved and given differ (other data behind the same path?)"


def clear_run(out_dir: Path) -> None:
    """Remove an earlier run's checkpoints and outputs from ``out_dir`` (main process).

    Warns when there was a run to remove.
    """
    if not is_main_process():
        return
    old = checkpoint_paths(out_dir / CHECKPOINT_DIR)
    best = checkpoint_paths(out_dir / BEST_CHECKPOINT_DIR)
    outputs = [out_dir / name for name in RUN_OUTPUTS if (out_dir / name).is_file()]
    if old or outputs:
        warn_user(
            f"starting a new run in {str(out_dir)!r}: removing the earlier run's checkpoints "
            f"({len(old)}) and outputs ({len(outputs)} files: model, report, figures, draws); "
            "pass resume=True (`--resume` on the command line) to continue it instead",
        )
    for path in outputs:
        path.unlink()
    for _, path in old + best:
        _remove_checkpoint(path)


def save_training_checkpoint(
    checkpoint_dir: Path,
    state: Any,
    step: int,
    history: list[dict[str, Any]],
    partial: dict[str, list[float]],
    keep_checkpoints: int,
    paths: list[np.ndarray] = (),
) -> Path:
    """Write the state and history at ``step``; keep the ``keep_checkpoints`` latest.

    Args:
        checkpoint_dir: The run's checkpoint folder.
        state: The training state.
        step: Steps done.
        history: Per-epoch entries so far.
        partial: Per-step metrics of the unfinished epoch.
        keep_checkpoints: Most recent checkpoints kept.
        paths: The unfinished epoch's traced negatives, so that a run resumed mid-epoch
            reports that epoch's ``negatives_rhat`` as an uninterrupted one does.

    Returns:
        The state's path.
    """
    path = checkpoint_dir / f"step_{step:08d}.eqx"
    save_checkpoint(path, state)
    if len(paths) and is_main_process():
        np.save(_paths_file(path), np.concatenate(paths), allow_pickle=False)
    # The JSON is written last: a checkpoint counts only once it exists.
    write_json(
        path.with_suffix(".json"),
        {"step": step, "history": history, "partial_epoch": partial},
        exact=True,
    )
    stale = checkpoint_paths(checkpoint_dir)[:-keep_checkpoints] if is_main_process() else []
    for _, old in stale:
        _remove_checkpoint(old)
    return path


def restore_checkpoint(
    out_dir: Path, template: Any, folder: str = CHECKPOINT_DIR, *, dim: int = 0
) -> RunStart | None:
    """The latest checkpoint of ``out_dir``, or ``None``.

    Args:
        out_dir: The run directory.
        template: A state of the run's structure (:meth:`Trainer.init_state`).
        folder: The checkpoint folder (:data:`BEST_CHECKPOINT_DIR` for the best validation).
        dim: The model's dimension (of the traced negatives kept with the checkpoint).

    Returns:
        The state and what was saved with it (no ``best_state``), or ``None`` (with a warning)
        when the run has no checkpoint. A damaged newest checkpoint falls back, with a
        warning, to the newest one that reads back.

    Raises:
        ValueError: If no checkpoint reads back (the newest one's error): a state not at the
            step its name says, a damaged file, damaged traced negatives.
    """
    checkpoint_dir = out_dir / folder
    found = checkpoint_paths(checkpoint_dir)
    if not found and folder != CHECKPOINT_DIR:
        return None
    if not found:
        warn_user(
            f"no checkpoint in {str(checkpoint_dir)!r}: starting the run from step 0",
        )
        return None
    # Newest first: a damaged one (a write cut short) falls back to the one before it, which
    # resumes to the same end; if none loads, the newest's error is the one to see.
    errors = []
    for saved_step, path in reversed(found):
        try:
            start = _read_checkpoint(path, saved_step, template, dim)
        except ValueError as error:
            errors.append(error)
            continue
        if errors:
            warn_user(f"{errors[0]}; resuming from the checkpoint before it, {path.name}")
        return start
    raise errors[0]


def _restore_best(out_dir: Path, template: Any, dim: int) -> RunStart | None:
    """The best validation's checkpoint; ``None``, with a warning, if it does not read back.

    Only one is kept, so a damaged one has nothing to fall back to: the run goes on without
    it rather than refusing to resume (a later, better validation replaces it).
    """
    try:
        return restore_checkpoint(out_dir, template, BEST_CHECKPOINT_DIR, dim=dim)
    except ValueError as error:
        warn_user(
            f"{error}; resuming without the best validation's state: a later validation that "
            "beats it is kept, and if none does the run ends with its last state"
        )
        return None


def _read_checkpoint(path: Path, saved_step: int, template: Any, dim: int) -> RunStart:
    """The run start a checkpoint holds; ``ValueError`` if it does not read back."""
    state = load_checkpoint(path, template)
    meta = read_checkpoint_meta(path.with_suffix(".json"))
    if int(state.step) != saved_step:
        raise ValueError(
            f"{path}: expected a checkpoint at step {saved_step}, "
            f"got a state at step {int(state.step)}"
        )
    paths_file = _paths_file(path)
    paths = [read_traced_paths(paths_file, dim)] if paths_file.exists() else []
    return RunStart(state, meta["history"], meta["partial_epoch"], paths)


def check_epochs_to_reach(out_dir: Path, step: int, config: dict[str, Any]) -> None:
    """Raise if a resumed run has already done more than ``config``'s ``num_epochs``.

    Resuming then would return the longer run's state while ``settings.json`` said fewer
    epochs: the run directory would contradict itself.

    Example:
        >>> from pathlib import Path
        >>> check_epochs_to_reach(Path("run"), 600, {"num_epochs": 3, "steps_per_epoch": 200})
        >>> check_epochs_to_reach(Path("run"), 600, {"num_epochs": 1, "steps_per_epoch": 200})
        Traceback (most recent call last):
        ...
        ValueError: run: expected `num_epochs` >= 3 to resume a run that has done 3 epochs ...
    """
    steps_per_epoch = config["steps_per_epoch"]
    if step > config["num_epochs"] * steps_per_epoch:
        done = step / steps_per_epoch
        raise ValueError(
            f"{out_dir}: expected `num_epochs` >= {math.ceil(done)} to resume a run that has "
            f"done {done:g} epochs ({step} steps), got {config['num_epochs']}"
        )


def open_run(
    out_dir: Path | None,
    state: Any,
    settings: dict[str, Any],
    settings_to_write: dict[str, Any],
    *,
    resume: bool,
) -> RunStart:
    """Start or resume a run in ``out_dir``: what the trainer's loop starts from.

    Everything is read and checked before anything is written, so a failed call leaves the
    run directory as it was. A new run clears the directory's checkpoints and outputs; both
    write ``settings.json``.

    Args:
        out_dir: The run directory, or ``None`` to keep nothing on disk.
        state: The state to start from (also the template of a checkpoint's structure).
        settings: The run's settings (with its ``dim``), compared with the saved ones when
            resuming.
        settings_to_write: The settings to write (``num_epochs`` may differ).
        resume: Continue from the last checkpoint in ``out_dir``.

    Returns:
        The given state with an empty history, or the latest checkpoint's.

    Raises:
        ValueError: If ``resume`` is asked without ``out_dir``, the saved settings differ, or
            the run has already gone past the epochs to reach.
        NotADirectoryError: If ``out_dir`` is a file.
    """
    resume = flag("resume", resume)
    if resume and out_dir is None:
        raise ValueError("expected `out_dir` to resume from, got None")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: expected a run directory, got a file")
    start = RunStart(state, [], {}, [])
    if resume:
        check_saved_settings(out_dir, settings)
        restored = restore_checkpoint(out_dir, state, dim=settings["dim"])
        if restored is not None:
            check_epochs_to_reach(out_dir, int(restored.state.step), settings_to_write["config"])
            best = _restore_best(out_dir, state, settings["dim"])
            start = restored._replace(best_state=None if best is None else best.state)
    if out_dir is not None:
        if not resume:
            clear_run(out_dir)
        write_json(out_dir / SETTINGS_FILE, settings_to_write)
    return start
