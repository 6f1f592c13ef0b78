"""Pure sampler functions over batches of walkers (from NumPyro only its dual averaging).

- :mod:`~numpyro_ebm.samplers.langevin`: MALA and ULA local moves.
- :mod:`~numpyro_ebm.samplers.global_moves`: i-SIR and independent MH with a flow proposal.
- :mod:`~numpyro_ebm.samplers.adaptation`: the ensemble preconditioner and step-size adaptation.
- :mod:`~numpyro_ebm.samplers.fit_progress`: when to stop fitting the flow.
- :mod:`~numpyro_ebm.samplers.warmup`: the adaptation state of a run and its update.
- :mod:`~numpyro_ebm.samplers.flowmc`: the flowMC round combining both, with adaptation.
"""

from numpyro_ebm.samplers.flowmc import FlowMCConfig, FlowMCRoundInfo, flowmc_round
from numpyro_ebm.samplers.global_moves import GlobalInfo, imh_step, importance_log_weight, isir_step
from numpyro_ebm.samplers.langevin import LocalInfo, Walkers, init_walkers, mala_step, ula_step
from numpyro_ebm.samplers.warmup import FlowMCAdaptation, init_adaptation

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
