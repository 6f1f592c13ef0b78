"""The exact densities of the built-in datasets with a known density (private).

The maths lives in module-level jitted functions (fast outside jit, inlined inside one); small
frozen parameter classes bind their arrays, so a :class:`~numpyro_ebm.datasets.Dataset`'s
callables are bound methods, which pickle.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from numpyro_ebm._checks import typed_key

__all__ = ["GaussianMixture", "Rings"]

# The rings density has an integrable 1/r singularity at the origin. Radii below this floor are
# evaluated at the floor: the mass of the disc r < 1e-6 is about p_r(0) * 1e-6 ~ 3e-16, and the
# capped value there (log density ~ -10) stays far below the rings' peak (~ -2.2), so grid
# normalisations in metrics.py stay finite and exact to float precision.
_RINGS_RADIUS_FLOOR = 1e-6


def _check_points(x: jax.Array, dim: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected points of shape (n, {dim}), got shape {x.shape}")
    return x


@jax.jit
def _mixture_log_prob(
    x: jax.Array, means: jax.Array, stds: jax.Array, weights: jax.Array
) -> jax.Array:
    dim = means.shape[1]
    sq_dist = jnp.sum((x[:, None, :] - means[None]) ** 2, axis=-1)  # (n, k)
    log_component = (
        -0.5 * sq_dist / stds**2 - dim * jnp.log(stds) - 0.5 * dim * math.log(2 * math.pi)
    )
    return logsumexp(log_component + jnp.log(weights), axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def _mixture_sample(
    key: jax.Array, n: int, means: jax.Array, stds: jax.Array, weights: jax.Array
) -> jax.Array:
    component_key, noise_key = jax.random.split(key)
    components = jax.random.categorical(component_key, jnp.log(weights), shape=(n,))
    noise = jax.random.normal(noise_key, (n, means.shape[1]))
    return means[components] + stds[components, None] * noise


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """sum_i w_i N(mu_i, sigma_i^2 I): means (k, d), stds (k,), weights (k,)."""

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray

    def log_prob(self, x: jax.Array) -> jax.Array:
        x = _check_points(x, self.means.shape[1])
        return _mixture_log_prob(x, self.means, self.stds, self.weights)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return _mixture_sample(typed_key(key), n, self.means, self.stds, self.weights)


@jax.jit
def _rings_log_prob(
    x: jax.Array, centres: jax.Array, std: jax.Array, weights: jax.Array
) -> jax.Array:
    radius = jnp.maximum(jnp.linalg.norm(x, axis=-1), _RINGS_RADIUS_FLOOR)
    # Folded mixture: the density of |R| at r > 0 is p_R(r) + p_R(-r).
    signed_centres = jnp.concatenate([centres, -centres])
    log_weights = jnp.log(jnp.concatenate([weights, weights]))
    log_component = (
        -0.5 * ((radius[:, None] - signed_centres) / std) ** 2
        - jnp.log(std)
        - 0.5 * math.log(2 * math.pi)
    )
    log_radius_density = logsumexp(log_component + log_weights, axis=-1)
    # Polar change of variables: dx dy = r dr dtheta, with theta uniform of density 1 / (2 pi).
    return log_radius_density - jnp.log(2 * math.pi * radius)


@functools.partial(jax.jit, static_argnums=1)
def _rings_sample(
    key: jax.Array, n: int, centres: jax.Array, std: jax.Array, weights: jax.Array
) -> jax.Array:
    component_key, noise_key, angle_key = jax.random.split(key, 3)
    components = jax.random.categorical(component_key, jnp.log(weights), shape=(n,))
    radius = jnp.abs(centres[components] + std * jax.random.normal(noise_key, (n,)))
    angle = jax.random.uniform(angle_key, (n,), maxval=2 * math.pi)
    return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=-1)


@dataclass(frozen=True, eq=False)
class Rings:
    """Radius ``|R|`` with R ~ sum_i w_i N(c_i, s^2), angle uniform on [0, 2 pi), in 2-D."""

    centres: np.ndarray
    std: float
    weights: np.ndarray

    def log_prob(self, x: jax.Array) -> jax.Array:
        return _rings_log_prob(_check_points(x, 2), self.centres, self.std, self.weights)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        return _rings_sample(typed_key(key), n, self.centres, self.std, self.weights)
