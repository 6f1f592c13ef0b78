"""Checks and device layout of the initial walker values that ``FlowMCKernel.init`` receives.

``init_params`` (given to ``MCMC.run``, or made by ``initialize_model``) hold one value per
walker, walker axis first, of the model's latent sites in the unconstrained space.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from numpyro.infer.util import initialize_model
from numpyro.util import is_prng_key

from numpyro_ebm._checks import is_key_array

__all__ = [
    "auto_axes",
    "check_init_params",
    "check_init_params_fit_model",
    "initialize_walkers",
    "num_walkers_of",
    "with_auto_axes",
]


def check_init_params(init_params: Any, num_walkers: int, *, from_model: bool) -> None:
    """Raise unless ``init_params`` are floating-point walker positions, walker axis first.

    Args:
        init_params: Initial values, walker axis first.
        num_walkers: Number of walkers (``MCMC``'s ``num_chains``).
        from_model: Whether the values come from a model (for the message).

    Raises:
        TypeError: If a leaf is not floating-point.
        ValueError: If there is nothing to sample, or a leaf's leading axis is not of size
            ``num_walkers``.

    Example:
        >>> check_init_params({}, 4, from_model=True)
        Traceback (most recent call last):
        ...
        ValueError: FlowMCKernel samples a model's latent sites: ...; got none (... {}; ...).
    """
    leaves = jax.tree.leaves(init_params)
    for leaf in leaves:
        dtype = np.result_type(getattr(leaf, "dtype", leaf))
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(
                "`init_params` are positions in the unconstrained space: expected floating-point"
                f" values; got a leaf of dtype {dtype} (convert it with "
                "`.astype(float)`)."
            )
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != num_walkers:
            raise ValueError(
                f"Each leaf of `init_params` must have the walker axis first, of size "
                f"num_chains={num_walkers}; got a leaf of shape {np.shape(leaf)}."
            )
    if sum(int(np.prod(np.shape(leaf)[1:])) for leaf in leaves) == 0:
        shapes = _per_walker_shapes(init_params)
        if from_model:
            raise ValueError(
                "FlowMCKernel samples a model's latent sites: expected a model with at least "
                "one latent (not observed) continuous sample site of positive size; got none "
                f"(latent sites and their shapes: {shapes}; discrete sites, which NumPyro "
                "enumerates, are summed out and not sampled)."
            )
        raise ValueError(
            "Expected `init_params` with at least one coordinate per walker to sample; got "
            f"per-walker shapes {shapes}."
        )


def _per_walker_shapes(values: Any) -> Any:
    return jax.tree.map(lambda leaf: tuple(np.shape(leaf)[1:]), values)


def check_init_params_fit_model(init_params: Any, model_params: dict) -> None:
    """Raise unless ``init_params`` has the model's latent sites, each of its per-walker shape.

    Args:
        init_params: Given initial values, walker axis first.
        model_params: Values the model's initialisation made, walker axis first.

    Raises:
        ValueError: Naming the expected sites and per-walker shapes, and what was given.

    Example:
        >>> import numpy as np
        >>> expected = {"a": np.zeros((8,)), "b": np.zeros((8, 3, 2))}
        >>> check_init_params_fit_model({"a": np.zeros(8), "B": np.zeros((8, 3, 2))}, expected)
        Traceback (most recent call last):
        ...
        ValueError: ... got {'B': (3, 2), 'a': ()} (missing ['b'], unknown ['B']).
    """
    expected = _per_walker_shapes(model_params)
    prefix = (
        "`init_params` for a model map each latent site to its unconstrained values, walker "
        "axis first: expected the sites "
    )
    if not isinstance(init_params, dict):
        raise ValueError(
            f"{prefix}{expected}; got an object of type {type(init_params).__name__} with "
            f"per-walker shapes {_per_walker_shapes(init_params)}."
        )
    given = _per_walker_shapes(init_params)
    missing = sorted(set(expected) - set(given))
    unknown = sorted(set(given) - set(expected))
    if missing or unknown:
        raise ValueError(f"{prefix}{expected}; got {given} (missing {missing}, unknown {unknown}).")
    wrong = sorted(name for name in expected if expected[name] != given[name])
    if wrong:
        raise ValueError(f"{prefix}{expected}; got {given} (wrong per-walker shape: {wrong}).")


def auto_axes(mesh: Mesh) -> Mesh:
    """The same devices and axis names with every axis of ``AxisType.Auto``.

    Example:
        >>> import jax
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
        >>> auto_axes(mesh).axis_types == (AxisType.Auto,)
        True
    """
    if all(axis_type == AxisType.Auto for axis_type in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def check_no_explicit_mesh_context(who: str) -> None:
    """Refuse to run under ``with jax.set_mesh(mesh)`` of a mesh with explicit axes.

    The walkers run on the mesh with automatic axes (:func:`auto_axes`); inside an explicit
    context every operation on them fails deep in JAX ("context mesh ... should match").

    Args:
        who: What is about to run, for the message.

    Raises:
        ValueError: Naming the context's mesh and the two ways that work.
    """
    context = jax.sharding.get_abstract_mesh()
    if context.empty or all(kind != AxisType.Explicit for kind in context.axis_types):
        return
    raise ValueError(
        f"expected {who} to run outside a `with jax.set_mesh(...)` block of a mesh with "
        f"explicit axes, got one ({dict(context.shape)}, "
        f"{context.axis_types}): leave the block and give the mesh itself (walkers or "
        "init_params sharded over it, or mesh=; explicit axes are accepted there), or make "
        "the context's mesh with axis_types=(AxisType.Auto, ...)"
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
        mesh = auto_axes(sharding.mesh)
        if mesh is sharding.mesh:
            return leaf
        return jax.device_put(leaf, NamedSharding(mesh, sharding.spec))

    return jax.tree.map(auto, init_params)


def num_walkers_of(rng_key: jax.Array) -> int:
    """The number of walkers: ``MCMC`` hands an ensemble kernel one key per chain.

    Raises:
        TypeError: If ``rng_key`` is not a key (``MCMC.run(0)``).
        ValueError: If ``rng_key`` is a single key (one chain, chains not vectorized, or a raw
            key of a non-default PRNG implementation, which NumPyro does not split).
    """
    if not isinstance(rng_key, jax.Array | np.ndarray):
        raise TypeError(
            "expected MCMC.run's first argument to be a PRNG key (jax.random.key(0) or "
            f"jax.random.PRNGKey(0)), got {type(rng_key).__name__} {rng_key!r}"
        )
    if is_prng_key(rng_key):
        raise ValueError(
            "FlowMCKernel is an ensemble kernel: its walkers are NumPyro's chains and share "
            "one flow. Use MCMC(..., num_chains=W, chain_method='vectorized') with W >= 2; "
            "got a single chain's key (num_chains=1 or chain_method other than 'vectorized')."
        )
    if rng_key.ndim != 2 and not is_key_array(rng_key):
        raise ValueError(
            "expected one PRNG key per walker from MCMC; got a single raw key of shape "
            f"{rng_key.shape}. NumPyro splits a raw `jax.random.PRNGKey` into chains only for "
            "JAX's default threefry implementation (shape (2,)); with jax_default_prng_impl="
            f"{jax.config.jax_default_prng_impl!r}, pass a typed key: jax.random.key(0)."
        )
    return int(rng_key.shape[0])


def initialize_walkers(rng_key, model, init_strategy, init_params, model_args, model_kwargs):
    """Initial unconstrained values of the walkers, and the model's potential and transforms.

    Args:
        rng_key: One key per walker.
        model: A NumPyro model, or ``None`` for a kernel built from a potential.
        init_strategy: NumPyro's per-site initialisation.
        init_params: Given initial values (walker axis first), or ``None``.
        model_args: Arguments of the model.
        model_kwargs: Keyword arguments of the model.

    Returns:
        ``(init_params, potential_fn_gen, postprocess_fn)``, the last two ``None`` without a
        model. ``init_params`` are checked and moved to automatic mesh axes.

    Raises:
        ValueError: If values are missing, do not fit the model's latent sites, have no latent
            coordinate, or lack the walker axis, or if it runs under ``jax.set_mesh`` of a mesh
            with explicit axes.
    """
    check_no_explicit_mesh_context("MCMC.run with FlowMCKernel")
    potential_fn_gen = postprocess_fn = None
    if model is not None:
        try:
            params_info, potential_fn_gen, postprocess_fn, _ = initialize_model(
                rng_key,
                model,
                dynamic_args=True,
                init_strategy=init_strategy,
                model_args=model_args,
                model_kwargs=model_kwargs,
                validate_grad=False,
            )
        except RuntimeError as error:
            if "Cannot find valid initial parameters" not in str(error):
                raise
            raise RuntimeError(_no_valid_start_message(rng_key.shape[0], init_strategy)) from error
        if init_params is None:
            init_params = params_info[0]
        else:
            check_init_params_fit_model(init_params, params_info[0])
    elif init_params is None:
        raise ValueError(
            "`init_params` (one value per walker, walker axis first) must be passed to "
            "`MCMC.run` when the kernel is built from `potential_fn`; got None."
        )
    check_init_params(init_params, rng_key.shape[0], from_model=model is not None)
    return with_auto_axes(init_params), potential_fn_gen, postprocess_fn


def _no_valid_start_message(num_walkers: int, init_strategy: Any) -> str:
    """NumPyro's failure to start, said for walkers: every one of them needs a valid start."""
    name = getattr(init_strategy, "__name__", None) or getattr(
        getattr(init_strategy, "func", None), "__name__", repr(init_strategy)
    )
    return (
        f"Cannot find valid initial parameters for all {num_walkers} walkers with "
        f"init_strategy={name}: NumPyro tries each walker's start up to 100 times and every "
        "walker needs a finite potential, so a start that a single NUTS chain finds can fail "
        "here when few draws of the strategy are valid (a prior much wider than the "
        "likelihood's support). Pass init_strategy=init_to_uniform (NUTS's default) or "
        "init_params with one valid value per walker."
    )
