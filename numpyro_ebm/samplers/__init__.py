"""Pure sampler functions over batches of walkers (no NumPyro dependency).

- :mod:`~numpyro_ebm.samplers.langevin`: MALA and ULA local moves.
- :mod:`~numpyro_ebm.samplers.global_moves`: i-SIR and independent MH with a flow proposal.
- :mod:`~numpyro_ebm.samplers.adaptation`: the ensemble preconditioner and step-size adaptation.
- :mod:`~numpyro_ebm.samplers.flowmc`: the flowMC round combining both, with adaptation.
"""

from numpyro_ebm.samplers.flowmc import (
    FlowMCAdaptation,
    FlowMCConfig,
    FlowMCRoundInfo,
    flowmc_round,
    init_adaptation,
)
from numpyro_ebm.samplers.global_moves import GlobalInfo, imh_step, importance_log_weight, isir_step
from numpyro_ebm.samplers.langevin import LocalInfo, Walkers, init_walkers, mala_step, ula_step

__all__ = [
    "FlowMCConfig",
    "FlowMCRoundInfo",
    "FlowMCAdaptation",
    "GlobalInfo",
    "LocalInfo",
    "Walkers",
    "flowmc_round",
    "imh_step",
    "importance_log_weight",
    "init_adaptation",
    "init_walkers",
    "isir_step",
    "mala_step",
    "ula_step",
]
