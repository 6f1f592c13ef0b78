"""Normalising constants of an energy, estimated with a flow proposal, and held-out likelihoods.

An energy ``U`` (a callable from one point ``(d,)`` to a scalar, e.g. a ``TiltedEnergy``) has
normalising constant Z = ∫ exp(−U(x)) dx. Both estimators of log Z start from a proposal q, a
flowjax distribution (e.g. a fitted flow): :func:`importance_log_normalizer` (IS) and
:func:`annealed_log_normalizer` (annealed IS, AIS [N]). :func:`log_normalizer` runs IS, falls
back to AIS when the effective sample size (ESS) [K, O] is too small, and warns when even AIS
leaves it small. Every estimate has a delta-method stderr of log Ẑ and its weights' ESS.

The ESS flags weights dominated by a few draws, not a region of exp(−U) that q (and AIS's MALA
moves) never visit: a proposal missing a mode gives even weights and log Ẑ low by
−log(1 − missing mass), with a small stderr. A proposal far narrower than exp(−U) gives weights
of infinite variance, whose ESS can look healthy in low dimension while log Ẑ is too low.

The estimators live in :mod:`~numpyro_ebm.likelihood.importance` (with
:func:`heldout_log_likelihood`) and :mod:`~numpyro_ebm.likelihood.annealed` (with
:func:`log_normalizer`); :mod:`~numpyro_ebm.likelihood.estimate` holds what they share.

References:
    [N] R. M. Neal, *Annealed importance sampling*, Statistics and Computing 11:125–139 (2001).
    [K] A. Kong, *A note on importance sampling using standardized weights*, TR 348 (1992).
    [O] A. B. Owen, *Monte Carlo theory, methods and examples* (2013), §9.2–9.3.
"""

from numpyro_ebm.likelihood.annealed import annealed_log_normalizer, log_normalizer
from numpyro_ebm.likelihood.estimate import LogNormalizerEstimate
from numpyro_ebm.likelihood.importance import heldout_log_likelihood, importance_log_normalizer

__all__ = [
    "LogNormalizerEstimate",
    "annealed_log_normalizer",
    "heldout_log_likelihood",
    "importance_log_normalizer",
    "log_normalizer",
]
