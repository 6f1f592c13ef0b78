"""Training objectives behind one interface (:mod:`~numpyro_ebm.training.objectives.base`).

Each objective is a settings dataclass that builds an :class:`Objective`; the trainer drives
any of them the same way (data pipeline, checkpoints with exact resume, metrics, plots, CLI).

- ``pcd``: :class:`PCD`, contrastive maximum likelihood with persistent negatives ([A]'s
  flow-assisted training with ``sampler="flowmc"``; ULA, MALA and NT baselines).
- ``cd``: :class:`CD`, contrastive divergence CD-k, k Langevin steps from the data batch.
- ``short-run``: :class:`ShortRun`, non-persistent short-run Langevin from noise, optionally
  from a replay buffer with re-initialisation.
- ``coopflow``: :class:`CoopFlow`, flow draws revised by Langevin steps, the flow fitted on
  the revised draws (cooperative learning).
- ``dsm``: :class:`DSM`, denoising score matching, one or several noise levels (fits the
  noise-smoothed data).
- ``ssm``: :class:`SSM`, sliced score matching (variance-reduced).
- ``nce``: :class:`NCE`, noise-contrastive estimation against a flow trained alongside (flow
  contrastive estimation, or maximum likelihood).
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
from numpyro_ebm.training.objectives.cd import CD
from numpyro_ebm.training.objectives.coopflow import CoopFlow
from numpyro_ebm.training.objectives.nce import NCE
from numpyro_ebm.training.objectives.pcd import PCD
from numpyro_ebm.training.objectives.score_matching import DSM, SSM
from numpyro_ebm.training.objectives.short_run import ShortRun

__all__ = [
    "OBJECTIVES",
    "CD",
    "DSM",
    "NCE",
    "PCD",
    "SSM",
    "CoopFlow",
    "Metrics",
    "Objective",
    "ObjectiveContext",
    "ObjectiveSettings",
    "ShortRun",
    "contrastive_loss_fn",
    "ebm_loss",
    "objective_settings",
]

#: Registered objectives: name -> settings class. Adding an objective = one line here.
OBJECTIVES: dict[str, type[ObjectiveSettings]] = {
    cls.name: cls for cls in (PCD, CD, ShortRun, CoopFlow, DSM, SSM, NCE)
}


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
    if "name" not in spec:
        raise ValueError(
            f'expected the objective\'s dict to name it ("name": one of {sorted(OBJECTIVES)}, '
            f'e.g. {{"name": "pcd", "sampler": "ula"}}), got {spec!r}'
        )
    name = spec["name"]
    if name not in OBJECTIVES:
        raise ValueError(f"expected an objective in {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name].from_dict(spec)
