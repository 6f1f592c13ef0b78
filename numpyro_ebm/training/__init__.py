"""Training of tilted energy-based models with any objective, and its run directories.

- :mod:`~numpyro_ebm.training.objectives`: the objectives behind one interface, ``pcd`` ([A]'s
  flow-assisted contrastive maximum likelihood and its baselines), ``cd``, ``short-run``,
  ``coopflow`` and the rest of the family.
- :mod:`~numpyro_ebm.training.negatives`: the negative samplers of ``pcd``: ``flowmc`` (the
  paper's), ``ula``, ``mala`` and ``nt``.
- :mod:`~numpyro_ebm.training.config`: :class:`TrainConfig`.
- :mod:`~numpyro_ebm.training.step`: :class:`TrainState` and the pure :func:`train_step`.
- :mod:`~numpyro_ebm.training.trainer`: :class:`Trainer` (progress bar, history,
  checkpoints, exact resume); :mod:`~numpyro_ebm.training.entry`: :func:`train`.
- :mod:`~numpyro_ebm.training.evaluation`: the report's metrics;
  :mod:`~numpyro_ebm.training.heldout`: held-out log-likelihood, and :func:`evaluate_run` of a
  saved run.
- :mod:`~numpyro_ebm.training.model_io` and :mod:`~numpyro_ebm.training.sampling`: saving a
  trained model (:func:`save_result`), :func:`load_energy`, and sampling it with ``FlowMCKernel``.
- :mod:`~numpyro_ebm.training.energy_specs`: which energy network a run trains (``mlp``,
  ``conv`` or a module of the user's) and the JSON spec that rebuilds a saved one.
- :mod:`~numpyro_ebm.training.run_dir` and :mod:`~numpyro_ebm.training.run_files`: writing a
  run directory, and reading its files, each checked, with errors ``<file>: <what is wrong>``.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from numpyro_ebm.training.checkpoint import load_checkpoint, save_checkpoint
from numpyro_ebm.training.config import TrainConfig
from numpyro_ebm.training.entry import train
from numpyro_ebm.training.evaluation import evaluate
from numpyro_ebm.training.heldout import evaluate_run
from numpyro_ebm.training.model_io import (
    TrainedModel,
    load_energy,
    load_model,
    save_model,
    save_result,
)
from numpyro_ebm.training.negatives import (
    NEGATIVE_SAMPLERS,
    NegativeInfo,
    NegativeSampler,
    flowmc_sampler,
    make_negative_sampler,
    mala_sampler,
    nt_sampler,
    ula_sampler,
)
from numpyro_ebm.training.objectives import (
    CD,
    DSM,
    NCE,
    OBJECTIVES,
    PCD,
    SSM,
    CoopFlow,
    Objective,
    ObjectiveContext,
    ObjectiveSettings,
    ShortRun,
    ebm_loss,
)
from numpyro_ebm.training.sampling import sample_energy, sample_run
from numpyro_ebm.training.step import TrainState, train_step
from numpyro_ebm.training.trainer import Trainer, TrainResult

__all__ = [
    "CD",
    "DSM",
    "NCE",
    "NEGATIVE_SAMPLERS",
    "OBJECTIVES",
    "PCD",
    "SSM",
    "CoopFlow",
    "NegativeInfo",
    "NegativeSampler",
    "Objective",
    "ObjectiveContext",
    "ObjectiveSettings",
    "ShortRun",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainedModel",
    "Trainer",
    "ebm_loss",
    "evaluate",
    "evaluate_run",
    "flowmc_sampler",
    "load_checkpoint",
    "load_energy",
    "load_model",
    "make_negative_sampler",
    "mala_sampler",
    "nt_sampler",
    "sample_energy",
    "sample_run",
    "save_checkpoint",
    "save_model",
    "save_result",
    "train",
    "train_step",
    "ula_sampler",
]
