"""Writing a training run directory: ``settings.json`` and ``checkpoints/``.

A run directory holds the settings of the run and its latest checkpoints (a state in
``step_<n>.eqx`` and, written last, its history in ``step_<n>.json``: a checkpoint counts only
once both exist). Reading is in :mod:`~numpyro_ebm.training.run_files`, which checks every file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from numpyro_ebm.training.checkpoint import (
    checkpoint_paths,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json,
)
from numpyro_ebm.training.mesh import is_main_process
from numpyro_ebm.training.run_files import read_checkpoint_meta, read_run_settings

__all__ = [
    "BEST_CHECKPOINT_DIR",
    "CHECKPOINT_DIR",
    "SETTINGS_FILE",
    "check_saved_settings",
    "open_run",
    "clear_checkpoints",
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
            warnings.warn(
                f"no {SETTINGS_FILE} in {str(out_dir)!r}: the given settings cannot be "
                "checked against the run's; resuming only if its checkpoint fits them",
                stacklevel=4,
            )
        return
    saved, saved_config = read_run_settings(path)
    differences = []
    for name in ("dataset", "energy"):  # a run of an earlier release records no energy spec
        if name in saved and saved[name] != current[name]:
            differences.append(f"{name}: saved {saved[name]!r}, given {current[name]!r}")
    # Compare through TrainConfig so that settings written by an older release still match.
    saved_settings = saved_config.to_dict()
    for name, value in current["config"].items():
        if name not in RESUMABLE_CHANGES and saved_settings.get(name) != value:
            differences.append(f"{name}: saved {saved_settings.get(name)!r}, given {value!r}")
    if differences:
        raise ValueError(
            f"expected the settings saved in {str(path)!r} to resume, got different ones: "
            + "; ".join(differences)
        )


def clear_checkpoints(out_dir: Path) -> None:
    """Remove the checkpoints of an earlier run in ``out_dir``, with a warning (main process)."""
    if not is_main_process():
        return
    old = checkpoint_paths(out_dir / CHECKPOINT_DIR)
    best = checkpoint_paths(out_dir / BEST_CHECKPOINT_DIR)
    if old:
        warnings.warn(
            f"starting a new run in {str(out_dir)!r}: removing its {len(old)} checkpoints "
            "(pass resume=True to continue it instead)",
            stacklevel=4,
        )
    for _, path in old + best:
        path.unlink()
        path.with_suffix(".json").unlink(missing_ok=True)


def save_training_checkpoint(
    checkpoint_dir: Path,
    state: Any,
    step: int,
    history: list[dict[str, Any]],
    partial: dict[str, list[float]],
    keep_checkpoints: int,
) -> Path:
    """Write the state and history at ``step``; keep the ``keep_checkpoints`` latest.

    Args:
        checkpoint_dir: The run's checkpoint folder.
        state: The training state.
        step: Steps done.
        history: Per-epoch entries so far.
        partial: Per-step metrics of the unfinished epoch.
        keep_checkpoints: Most recent checkpoints kept.

    Returns:
        The state's path.
    """
    path = checkpoint_dir / f"step_{step:08d}.eqx"
    save_checkpoint(path, state)
    # The JSON is written last: a checkpoint counts only once both files exist.
    write_json(
        path.with_suffix(".json"), {"step": step, "history": history, "partial_epoch": partial}
    )
    stale = checkpoint_paths(checkpoint_dir)[:-keep_checkpoints] if is_main_process() else []
    for _, old in stale:
        old.with_suffix(".json").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return path


def restore_checkpoint(
    out_dir: Path, template: Any, folder: str = CHECKPOINT_DIR
) -> tuple[Any, list[dict[str, Any]], dict[str, list[float]]] | None:
    """The latest checkpoint of ``out_dir``: ``(state, history, partial epoch)``, or ``None``.

    Args:
        out_dir: The run directory.
        template: A state of the run's structure (:meth:`Trainer.init_state`).
        folder: The checkpoint folder (:data:`BEST_CHECKPOINT_DIR` for the best validation).

    Returns:
        The state and the history saved with it, or ``None`` (with a warning) when the run has
        no checkpoint.

    Raises:
        ValueError: If the checkpoint's state is not at the step its name says.
    """
    checkpoint_dir = out_dir / folder
    found = latest_checkpoint(checkpoint_dir)
    if found is None and folder != CHECKPOINT_DIR:
        return None
    if found is None:
        warnings.warn(
            f"no checkpoint in {str(checkpoint_dir)!r}: starting the run from step 0",
            stacklevel=3,
        )
        return None
    saved_step, path = found
    state = load_checkpoint(path, template)
    meta = read_checkpoint_meta(path.with_suffix(".json"))
    if int(state.step) != saved_step:
        raise ValueError(
            f"{path}: expected a checkpoint at step {saved_step}, "
            f"got a state at step {int(state.step)}"
        )
    return state, meta["history"], meta["partial_epoch"]


def open_run(
    out_dir: Path | None,
    state: Any,
    settings: dict[str, Any],
    settings_to_write: dict[str, Any],
    *,
    resume: bool,
) -> tuple[Any, list[dict[str, Any]], dict[str, list[float]], Any]:
    """Start or resume a run in ``out_dir``: what the trainer's loop starts from.

    Everything is read and checked before anything is written, so a failed call leaves the
    run directory as it was. A new run clears the directory's checkpoints; both write
    ``settings.json``.

    Args:
        out_dir: The run directory, or ``None`` to keep nothing on disk.
        state: The state to start from (also the template of a checkpoint's structure).
        settings: The run's settings, compared with the saved ones when resuming.
        settings_to_write: The settings to write (``num_epochs`` may differ).
        resume: Continue from the last checkpoint in ``out_dir``.

    Returns:
        ``(state, history, partial epoch, best state or None)``.

    Raises:
        ValueError: If ``resume`` is asked without ``out_dir``, or the saved settings differ.
    """
    if resume and out_dir is None:
        raise ValueError("expected `out_dir` to resume from, got None")
    history, partial, best_state = [], {}, None
    if resume:
        check_saved_settings(out_dir, settings)
        restored = restore_checkpoint(out_dir, state)
        if restored is not None:
            state, history, partial = restored
            best = restore_checkpoint(out_dir, state, BEST_CHECKPOINT_DIR)
            best_state = None if best is None else best[0]
    if out_dir is not None:
        if not resume:
            clear_checkpoints(out_dir)
        write_json(out_dir / SETTINGS_FILE, settings_to_write)
    return state, history, partial, best_state
