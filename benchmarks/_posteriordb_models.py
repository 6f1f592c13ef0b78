"""NumPyro versions of posteriordb's Stan models, and their data from posteriordb's zips.

Each model reproduces the Stan program of stan-dev/posteriordb
(``posterior_database/models/stan/<model>.stan``) term by term: the same parameters, the same
constraints and the same priors, with Stan's implicit flat priors written out (an unbounded
parameter without a prior is an ``ImproperUniform``; a bounded one is flat on its interval). A
Stan ``<lower=0>`` parameter with a ``normal``/``cauchy`` statement is a half-normal/half-Cauchy
(the truncation's constant does not matter for sampling). Transformed parameters that Stan
reports (``theta`` of eight schools) are ``numpyro.deterministic`` sites, so they are compared
like parameters.

Data: ``<data name>.json.zip`` holding ``<data name>.json``, as posteriordb publishes it.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

#: Where the data sets live in this workspace: ``<repo>/../shared/posteriordb``.
DEFAULT_POSTERIORDB_DIR = Path(__file__).resolve().parents[2] / "shared" / "posteriordb"


def load_data(directory: Path, data_name: str) -> dict:
    """The JSON data set ``data_name`` from ``directory/<data_name>.json.zip``."""
    path = Path(directory) / f"{data_name}.json.zip"
    if not path.is_file():
        raise FileNotFoundError(
            f"posteriordb data set {data_name!r} not found: expected {path}. Pass "
            "--posteriordb DIR, the folder holding eight_schools.json.zip, garch.json.zip, "
            "low_dim_gauss_mix.json.zip, arK.json.zip and kidiq.json.zip."
        )
    with zipfile.ZipFile(path) as archive:
        with archive.open(f"{data_name}.json") as handle:
            return json.load(handle)


def _flat(shape: tuple[int, ...] = ()) -> dist.Distribution:
    """Stan's implicit flat prior on an unbounded parameter."""
    support = constraints.real_vector if shape else constraints.real
    return dist.ImproperUniform(support, (), shape)


def eight_schools_noncentered(J: int, y: np.ndarray, sigma: np.ndarray) -> None:
    """``eight_schools_noncentered.stan``."""
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([J]))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", theta_trans * tau + mu)
    numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def garch11(T: int, y: np.ndarray, sigma1: float) -> None:
    """``garch11.stan``: flat priors on ``mu``, ``alpha0 > 0``, ``alpha1`` and ``beta1``."""
    mu = numpyro.sample("mu", _flat())
    alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
    alpha1 = numpyro.sample("alpha1", dist.Uniform(0.0, 1.0))
    # Stan's beta1 is flat on (0, 1 - alpha1); Uniform's density is 1 / (1 - alpha1) there, so
    # add log(1 - alpha1) back to make it flat.
    beta1 = numpyro.sample("beta1", dist.Uniform(0.0, 1.0 - alpha1))
    numpyro.factor("beta1_flat", jnp.log1p(-alpha1))

    def step(sigma_prev, y_prev):
        sigma_t = jnp.sqrt(alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * sigma_prev**2)
        return sigma_t, sigma_t

    _, sigma_rest = jax.lax.scan(step, jnp.asarray(sigma1, jnp.result_type(float)), y[:-1])
    sigma = jnp.concatenate([jnp.array([sigma1], sigma_rest.dtype), sigma_rest])
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def low_dim_gauss_mix(N: int, y: np.ndarray) -> None:
    """``low_dim_gauss_mix.stan``: ordered means, half-normal sds, ``theta`` ~ Beta(5, 5)."""
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    numpyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    log_mix = jnp.logaddexp(
        jnp.log(theta) + dist.Normal(mu[0], sigma[0]).log_prob(y),
        jnp.log1p(-theta) + dist.Normal(mu[1], sigma[1]).log_prob(y),
    )
    numpyro.factor("y", log_mix.sum())


def ark(K: int, T: int, y: np.ndarray) -> None:
    """``arK.stan``: AR(K) with Normal(0, 10) coefficients and a half-Cauchy(2.5) noise sd."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    # lags[t - K, k] = y[t - k - 1] for t = K, ..., T - 1 (0-based): Stan's y[t - k], k = 1..K.
    lags = np.stack([y[K - k - 1 : T - k - 1] for k in range(K)], axis=1)
    numpyro.sample("y", dist.Normal(alpha + lags @ beta, sigma), obs=y[K:])


def kidscore_momiq(N: int, kid_score: np.ndarray, mom_iq: np.ndarray) -> None:
    """``kidscore_momiq.stan``: flat ``beta``, half-Cauchy(2.5) ``sigma``; ``mom_iq`` ~ 100."""
    beta = numpyro.sample("beta", _flat((2,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    numpyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)


def kidscore_interaction(
    N: int,
    kid_score: np.ndarray,
    mom_iq: np.ndarray,
    mom_hs: np.ndarray,
) -> None:
    """``kidscore_interaction.stan``: ``kid_score`` on ``mom_hs``, ``mom_iq`` and their product."""
    beta = numpyro.sample("beta", _flat((4,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = beta[0] + beta[1] * mom_hs + beta[2] * mom_iq + beta[3] * (mom_hs * mom_iq)
    numpyro.sample("kid_score", dist.Normal(mean, sigma), obs=kid_score)


class PosteriordbModel(NamedTuple):
    """One posteriordb posterior: its model, data set and the data fields the model takes."""

    model: Callable
    data_name: str
    fields: tuple[str, ...]
    #: Whether the long NUTS reference run uses a dense mass matrix (strong correlations).
    dense_mass: bool


#: posteriordb posterior name (``<data>-<model>``) -> how to build it.
POSTERIORDB: dict[str, PosteriordbModel] = {
    "eight_schools-eight_schools_noncentered": PosteriordbModel(
        eight_schools_noncentered, "eight_schools", ("J", "y", "sigma"), False
    ),
    "garch-garch11": PosteriordbModel(garch11, "garch", ("T", "y", "sigma1"), True),
    "low_dim_gauss_mix-low_dim_gauss_mix": PosteriordbModel(
        low_dim_gauss_mix, "low_dim_gauss_mix", ("N", "y"), False
    ),
    "arK-arK": PosteriordbModel(ark, "arK", ("K", "T", "y"), True),
    "kidiq-kidscore_momiq": PosteriordbModel(
        kidscore_momiq, "kidiq", ("N", "kid_score", "mom_iq"), True
    ),
    "kidiq-kidscore_interaction": PosteriordbModel(
        kidscore_interaction, "kidiq", ("N", "kid_score", "mom_iq", "mom_hs"), True
    ),
}


def model_kwargs(directory: Path, name: str) -> dict:
    """Keyword arguments of the model of posterior ``name``: its data, ints as ints."""
    spec = POSTERIORDB[name]
    data = load_data(directory, spec.data_name)
    return {
        field: data[field] if isinstance(data[field], int) else np.asarray(data[field], float)
        for field in spec.fields
    }
