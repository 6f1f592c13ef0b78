"""Checks and device layout of the initial walker values that ``FlowMCKernel.init`` receives.

``init_params`` (given to ``MCMC.run``, or made by ``initialize_model``) hold one value per
walker, walker axis first, of the model's latent sites in the unconstrained space.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

__all__ = ["check_init_params", "with_auto_axes"]


def check_init_params(init_params: Any, num_walkers: int, *, from_model: bool) -> None:
    """Raise if ``init_params`` has no latent coordinate or a leaf without the walker axis.

    Args:
        init_params: Initial values, walker axis first.
        num_walkers: Number of walkers (``MCMC``'s ``num_chains``).
        from_model: Whether the values come from a model (for the message).

    Raises:
        ValueError: If there is nothing to sample, or a leaf's leading axis is not of size
            ``num_walkers``.

    Example:
        >>> check_init_params({}, 4, from_model=True)
        Traceback (most recent call last):
        ...
        ValueError: FlowMCKernel samples a model's latent sites: ...; got none (... {}).
    """
    leaves = jax.tree.leaves(init_params)
    for leaf in leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != num_walkers:
            raise ValueError(
                f"Each leaf of `init_params` must have the walker axis first, of size "
                f"num_chains={num_walkers}; got a leaf of shape {np.shape(leaf)}."
            )
    if sum(int(np.prod(np.shape(leaf)[1:])) for leaf in leaves) == 0:
        shapes = jax.tree.map(lambda leaf: tuple(np.shape(leaf)[1:]), init_params)
        if from_model:
            raise ValueError(
                "FlowMCKernel samples a model's latent sites: expected a model with at least "
                "one latent (not observed) sample site of positive size; got none (latent "
                f"sites and their shapes: {shapes})."
            )
        raise ValueError(
            "Expected `init_params` with at least one coordinate per walker to sample; got "
            f"per-walker shapes {shapes}."
        )


def with_auto_axes(init_params: Any) -> Any:
    """Move leaves sharded over a mesh with explicit axes to the same mesh with automatic axes.

    ``jax.make_mesh`` makes meshes with ``AxisType.Explicit`` axes by default, on which
    NumPyro's batch ravelling (``leaf[0]``) and the kernel's per-walker indexing raise a
    ``ShardingTypeError``. With automatic axes the walkers stay split over the same devices
    in the same way, and XLA propagates the layout.

    Args:
        init_params: Initial values, walker axis first.

    Returns:
        The same values; explicitly sharded leaves are put on the automatic-axes mesh.
    """

    def auto(leaf):
        if not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer):
            return leaf
        sharding = leaf.sharding
        if not isinstance(sharding, NamedSharding):
            return leaf
        mesh = sharding.mesh
        if all(axis_type == AxisType.Auto for axis_type in mesh.axis_types):
            return leaf
        auto_mesh = Mesh(
            mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names)
        )
        return jax.device_put(leaf, NamedSharding(auto_mesh, sharding.spec))

    return jax.tree.map(auto, init_params)
