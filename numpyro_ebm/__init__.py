"""numpyro_ebm: flow-assisted training and sampling of energy-based models in NumPyro."""

from numpyro_ebm.kernel import FlowMCKernel, FlowMCState

__version__ = "0.1.0"

__all__ = ["FlowMCKernel", "FlowMCState"]
