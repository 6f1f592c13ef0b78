"""Flow-assisted training of tilted energy-based models ([A] Alg. 1) and its run directories.

- :mod:`~numpyro_ebm.training.negatives`: the negative samplers ``flowmc`` (the paper's),
  ``ula``, ``mala`` and ``nt`` behind one interface.
- :mod:`~numpyro_ebm.training.trainer`: :class:`TrainConfig`, :class:`TrainState`, the pure
  :func:`train_step`, :class:`Trainer` and :func:`train` (progress bar, history, checkpoints,
  exact resume).
- :mod:`~numpyro_ebm.training.evaluation`: the report's metrics.
- :mod:`~numpyro_ebm.training.model_io` and :mod:`~numpyro_ebm.training.sampling`: saving a
  trained model, :func:`load_energy`, and sampling it with ``FlowMCKernel``.
- :mod:`~numpyro_ebm.training.run_files`: reading a run directory's files, each checked, with
  errors ``<file>: <what is wrong>``.

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
"""

from numpyro_ebm.training.checkpoint import load_checkpoint, save_checkpoint
from numpyro_ebm.training.evaluation import evaluate
from numpyro_ebm.training.model_io import TrainedModel, load_energy, load_model, save_model
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
from numpyro_ebm.training.sampling import sample_energy, sample_run
from numpyro_ebm.training.trainer import (
    StepInfo,
    TrainConfig,
    Trainer,
    TrainResult,
    TrainState,
    ebm_loss,
    train,
    train_step,
)

__all__ = [
    "NEGATIVE_SAMPLERS",
    "NegativeInfo",
    "NegativeSampler",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainedModel",
    "Trainer",
    "ebm_loss",
    "evaluate",
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
    "train",
    "train_step",
    "ula_sampler",
]
