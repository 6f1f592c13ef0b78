"""Pytree comparison shared by the kernel, key and pickling tests."""

import jax
import jax.numpy as jnp
import numpy as np


def leaves_equal(a, b) -> bool:
    """Same pytree values: NaN equals NaN (e.g. ``flow_loss`` while sampling), typed keys
    compare by their data."""

    def values(leaf):
        if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)

    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(values(x), values(y), equal_nan=True) for x, y in pairs)
