"""numpyro_ebm: flow-assisted training and sampling of energy-based models in NumPyro.

The public API in one import: the :class:`FlowMCKernel` MCMC kernel, energies as NumPyro
factors, the ArviZ conversion that keeps EBM factors out of the log-likelihood, the built-in
datasets, and the contrastive trainer with :func:`load_energy` for trained models.
"""

from numpyro_ebm.datasets import get_dataset, list_datasets
from numpyro_ebm.diagnostics import from_numpyro
from numpyro_ebm.energies import MLPEnergy, TiltedEnergy, ebm_model, energy_factor
from numpyro_ebm.kernel import FlowMCKernel, FlowMCState
from numpyro_ebm.networks import ConvEnergy, check_energy
from numpyro_ebm.training import TrainConfig, Trainer, load_energy, train

__version__ = "0.1.0"

__all__ = [
    "ConvEnergy",
    "FlowMCKernel",
    "FlowMCState",
    "MLPEnergy",
    "TrainConfig",
    "Trainer",
    "TiltedEnergy",
    "check_energy",
    "ebm_model",
    "energy_factor",
    "from_numpyro",
    "get_dataset",
    "list_datasets",
    "load_energy",
    "train",
]
