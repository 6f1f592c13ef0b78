"""Training objectives behind one interface (:mod:`~numpyro_ebm.training.objectives.base`).

Each objective is a settings dataclass that builds an :class:`Objective`; the trainer drives
any of them the same way (data pipeline, checkpoints with exact resume, metrics, plots, CLI).

- ``pcd``: :class:`PCD`, contrastive maximum likelihood with persistent negatives ([A]'s
  flow-assisted training with ``sampler="flowmc"``; ULA, MALA and NT baselines).
"""

from __future__ import annotations

from typing import Any

from numpyro_ebm.training.objectives.base import (
    Metrics,
    Objective,
    ObjectiveContext,
    ObjectiveSettings,
    contrastive_loss_fn,
    ebm_loss,
)
from numpyro_ebm.training.objectives.pcd import PCD

__all__ = [
    "OBJECTIVES",
    "PCD",
    "Metrics",
    "Objective",
    "ObjectiveContext",
    "ObjectiveSettings",
    "contrastive_loss_fn",
    "ebm_loss",
    "objective_settings",
]

#: Registered objectives: name -> settings class. Adding an objective = one line here.
OBJECTIVES: dict[str, type[ObjectiveSettings]] = {cls.name: cls for cls in (PCD,)}


def objective_settings(spec: str | dict[str, Any] | ObjectiveSettings) -> ObjectiveSettings:
    """Settings of an objective from its name (defaults), a dict with ``"name"``, or settings.

    Args:
        spec: ``"pcd"``, ``{"name": "pcd", "sampler": "ula"}`` or a settings object.

    Returns:
        The settings object.

    Raises:
        ValueError: For an unknown objective or setting.
        TypeError: For anything else.

    Example:
        >>> objective_settings({"name": "pcd", "sampler": "ula"}).sampler
        'ula'
    """
    if isinstance(spec, ObjectiveSettings):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise TypeError(
            "expected an objective name, a dict of its settings or an ObjectiveSettings, "
            f"got {type(spec).__name__}"
        )
    name = spec.get("name")
    if name not in OBJECTIVES:
        raise ValueError(f"expected an objective in {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name].from_dict(spec)
