"""ArviZ conversion that keeps EBM factors out of the likelihood.

``numpyro.factor`` sites are observed sample sites, so NumPyro's ``log_likelihood`` and ArviZ's
``from_numpyro`` treat an energy factor exp(-E(x)) as a likelihood term: it lands in the
``log_likelihood`` and ``observed_data`` groups and PSIS-LOO then scores the prior energy as if
it were a data point (METHOD §6). :func:`from_numpyro` converts with the EBM factors of
:func:`numpyro_ebm.energies.energy_factor` hidden, and keeps every genuine likelihood site.
"""

import copy
from typing import Any

import arviz_base
import numpyro
from numpyro import handlers
from xarray import DataTree

from numpyro_ebm.energies import is_ebm_factor


def from_numpyro(posterior: Any, **kwargs: Any) -> DataTree:
    """Convert a NumPyro MCMC run to an ArviZ DataTree without the EBM factor sites.

    A thin wrapper of ``arviz.from_numpyro`` (arviz_base): ArviZ traces the sampler's model to
    find observed sites (for ``observed_data``) and to compute ``log_likelihood``; here it traces
    the model under ``numpyro.handlers.block`` hiding the sites marked by
    :func:`numpyro_ebm.energies.energy_factor`. Those sites still weight the posterior (the
    samples come from the run itself), but they are neither observed data nor log-likelihood
    terms, so ``arviz.loo`` scores only the genuine likelihood sites.

    Args:
        posterior: A fitted ``numpyro.infer.MCMC``, or an arviz_base ``NumPyroInferenceAdapter``
            (e.g. ``arviz_base.SVIAdapter``). A run from a ``potential_fn`` (no model) is
            converted as ArviZ converts it.
        **kwargs: Passed on to ``arviz.from_numpyro`` (``log_likelihood``, ``coords``, ``dims``,
            ``prior``, ``posterior_predictive``, ...), with ArviZ's defaults; in particular pass
            ``log_likelihood=True`` to compute the log-likelihood group needed by ``loo``.

    Returns:
        The DataTree with groups ``posterior``, ``sample_stats`` and, when present,
        ``log_likelihood`` and ``observed_data`` restricted to non-EBM observed sites. A group
        left without variables is omitted.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro.infer import MCMC, NUTS
        >>> from numpyro_ebm.energies import ebm_model
        >>> mcmc = MCMC(NUTS(ebm_model(lambda x: 0.5 * jnp.sum(x**2), 2)),
        ...             num_warmup=20, num_samples=20, progress_bar=False)
        >>> mcmc.run(jax.random.key(0))
        >>> tree = from_numpyro(mcmc, log_likelihood=True)
        >>> sorted(tree.children)  # no log_likelihood / observed_data for the EBM factor
        ['posterior', 'sample_stats']
    """
    if isinstance(posterior, numpyro.infer.MCMC):
        if posterior.last_state is None:  # ArviZ fails on its missing `_args`
            raise ValueError("expected an MCMC after `run`, got one that has not run")
        adapter = arviz_base.MCMCAdapter(posterior)
    elif isinstance(posterior, arviz_base.NumPyroInferenceAdapter):
        adapter = copy.copy(posterior)
    else:
        raise TypeError(
            "`posterior` must be a numpyro.infer.MCMC or an arviz_base.NumPyroInferenceAdapter, "
            f"got {type(posterior).__name__}."
        )
    if adapter.model is not None:
        adapter.model = handlers.block(adapter.model, hide_fn=is_ebm_factor)
    tree = arviz_base.from_numpyro(adapter, **kwargs)
    # With only EBM factors observed, ArviZ still builds an empty log-likelihood group.
    for group in ("log_likelihood", "observed_data"):
        if group in tree.children and not tree[group].data_vars:
            del tree[group]
    return tree
