"""numpyro_ebm: flow-assisted training and sampling of energy-based models in NumPyro.

The public API in one import: the :class:`FlowMCKernel` MCMC kernel, energies as NumPyro
factors, the ArviZ conversion that keeps EBM factors out of the log-likelihood, and the built-in
datasets.
"""

from numpyro_ebm.datasets import get_dataset, list_datasets
from numpyro_ebm.diagnostics import from_numpyro
from numpyro_ebm.energies import MLPEnergy, TiltedEnergy, ebm_model, energy_factor
from numpyro_ebm.kernel import FlowMCKernel, FlowMCState

__version__ = "0.1.0"

__all__ = [
    "FlowMCKernel",
    "FlowMCState",
    "MLPEnergy",
    "TiltedEnergy",
    "ebm_model",
    "energy_factor",
    "from_numpyro",
    "get_dataset",
    "list_datasets",
]
