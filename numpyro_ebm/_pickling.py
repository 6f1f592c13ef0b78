"""Pickling of flowjax flows and of :class:`~numpyro_ebm.FlowMCKernel`.

NumPyro users pickle ``MCMC`` objects, hence their kernels, and a kernel may hold a flowjax
flow. A flowjax flow does not pickle as it is; it holds three kinds of objects ``pickle``
refuses:

- **local closures**: every coupling or autoregressive layer keeps the ``constructor`` made by
  ``flowjax.utils.get_ravelled_pytree_constructor``;
- **module-level objects that are not plain functions**, such as ``jax.nn.relu`` (a
  ``custom_jvp``) and ``jax.nn.softplus`` (a jitted function);
- **lambdas bound to a module-level name**, such as equinox's ``_identity``, which ``pickle``
  cannot find under their ``__qualname__`` (``<lambda>``).

:func:`dumps_flow` pickles a flow (or any pytree holding flow parts) with a pickler that stores
the last two kinds as a reference to the global name they are bound to (what ``pickle`` does
for plain functions), and the closures of a flow built by
:func:`numpyro_ebm.flows.default_flow` as "closure number *i* of the flow that ``default_flow``
builds with these options": ``default_flow`` registers its options with
:func:`remember_recipe`. Those closures depend only on the options (dimension, layers, widths,
transformer), not on the key or the weights, so a freshly built flow supplies equivalent ones on
loading. Arrays (weights, location, scale) are stored by value, so a fitted flow comes back
exactly. A flow whose parts all pickle (e.g. flowjax's ``Normal``) needs no recipe; a flow
holding a closure that no recipe made (e.g. a ``coupling_flow`` built by hand) raises a
``TypeError`` naming the remedy when it is pickled.

Why not ``cloudpickle``, which pickles closures by value: it is not a dependency of this
package, and pickling code by value ties a pickle to the exact Python and library versions.
Why not only ``equinox.tree_serialise_leaves``: it stores the arrays but needs a skeleton of
the same structure to load into; the recipe is that skeleton.

:func:`kernel_getstate` and :func:`kernel_setstate` are ``FlowMCKernel``'s pickling: its flows
as above, its optax optimizer (closures) rebuilt from the learning rate, its walker layout (the
unravel closure and the walkers' sharding) rebuilt from picklable descriptions; the state's
arrays keep their layout over devices the same way (:func:`reduce_keeping_layout`). A kernel built
from a ``potential_fn`` is then complete after loading, so ``MCMC`` continues from
``last_state`` without ``init_params``; a kernel built from a ``model`` is initialised again by
``MCMC``, as NumPyro's own kernels are, because its potential is a closure over the model's
arguments.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "dumps_flow",
    "reduce_keeping_layout",
    "kernel_getstate",
    "kernel_setstate",
    "latent_template",
    "loads_flow",
    "remember_recipe",
]

#: Closure -> (recipe, index among the recipe flow's closures). Weak keys: a registration
#: lives as long as the flow part holding the closure.
_RECIPE_OF_CLOSURE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _closures(tree: Any) -> list[types.FunctionType]:
    """The local functions (closures and lambdas defined in functions) among the leaves."""
    return [
        leaf
        for leaf in jax.tree.leaves(tree)
        if isinstance(leaf, types.FunctionType) and "<locals>" in leaf.__qualname__
    ]


def remember_recipe(flow: Any, builder: Callable, **options: Any) -> Any:
    """Register how to rebuild the closures of ``flow``: ``builder(key, **options)``.

    Args:
        flow: A flow just built by ``builder``.
        builder: A module-level function taking a PRNG key first (e.g. ``default_flow``).
        **options: Its other arguments; those that shape the flow's closures must be given.

    Returns:
        ``flow``, unchanged.
    """
    recipe = (builder, tuple(sorted(options.items())))
    for index, closure in enumerate(_closures(flow)):
        _RECIPE_OF_CLOSURE[closure] = (recipe, index)
    return flow


@functools.lru_cache(maxsize=32)
def _recipe_closures(recipe: tuple) -> list[types.FunctionType]:
    builder, options = recipe
    return _closures(builder(jax.random.key(0), **dict(options)))


def _closure_from_recipe(recipe: tuple, index: int) -> types.FunctionType:
    return _recipe_closures(recipe)[index]


def _module_attribute(module: str, name: str) -> Any:
    return getattr(sys.modules.get(module) or __import__(module, fromlist=[name]), name)


def _global_name(obj: Any) -> tuple[str, str] | None:
    """``(module, name)`` under which ``obj`` is bound at module level, if any."""
    module_name = getattr(obj, "__module__", None)
    module = sys.modules.get(module_name) if isinstance(module_name, str) else None
    if module is None:
        return None
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(qualname, str) and getattr(module, qualname, None) is obj:
        return module_name, qualname
    for name, value in vars(module).items():
        if value is obj:
            return module_name, name
    return None


class _FlowPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) or not callable(obj):
            return NotImplemented
        if isinstance(obj, types.FunctionType):
            reference = _RECIPE_OF_CLOSURE.get(obj)
            if reference is not None:
                return _closure_from_recipe, reference
        if isinstance(obj, types.FunctionType | types.BuiltinFunctionType) and (
            "<locals>" not in obj.__qualname__ and obj.__name__ != "<lambda>"
        ):
            return NotImplemented  # plain module-level functions: pickle's own reference
        name = _global_name(obj)
        if name is not None:
            return _module_attribute, name
        return NotImplemented


def dumps_flow(tree: Any) -> bytes:
    """Pickle a flow, or any pytree of flow parts, as described in the module docstring.

    Args:
        tree: A flowjax flow, or e.g. the static part from ``split_flow``.

    Returns:
        The pickle.

    Raises:
        TypeError: If ``tree`` holds a closure that no registered recipe made.

    Example:
        >>> import jax, pickle
        >>> from numpyro_ebm.flows import default_flow
        >>> flow = default_flow(jax.random.key(0), 2)
        >>> x = jax.numpy.ones(2)
        >>> bool(loads_flow(dumps_flow(flow)).log_prob(x) == flow.log_prob(x))
        True
    """
    buffer = io.BytesIO()
    try:
        _FlowPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(tree)
    except (AttributeError, TypeError, pickle.PicklingError) as error:
        unknown = [
            closure.__qualname__ for closure in _closures(tree) if closure not in _RECIPE_OF_CLOSURE
        ] or [str(error)]
        raise TypeError(
            "Expected a flow built by `numpyro_ebm.flows.default_flow` (e.g. from "
            "`FlowMCKernel.get_flow`) or one whose parts pickle (e.g. flowjax's `Normal`), so "
            f"that it can be pickled; got one holding {', '.join(sorted(set(unknown)))}, which "
            "pickle cannot store. Build the flow with `default_flow` (and fit it), or keep the "
            "kernel out of the pickle."
        ) from error
    return buffer.getvalue()


def loads_flow(data: bytes) -> Any:
    """Load what :func:`dumps_flow` wrote.

    Args:
        data: The pickle.

    Returns:
        The flow (or pytree).
    """
    return pickle.loads(data)


class _PickledFlow(NamedTuple):
    """A kernel attribute stored with :func:`dumps_flow`."""

    data: bytes


class _ShardingDescription(NamedTuple):
    """A walker sharding by device ids (``jax`` devices do not pickle)."""

    device_ids: np.ndarray
    axis_names: tuple[str, ...]
    spec: tuple


def _describe_sharding(sharding: NamedSharding | None) -> _ShardingDescription | None:
    if sharding is None:
        return None
    mesh = sharding.mesh
    return _ShardingDescription(
        np.vectorize(lambda device: device.id, otypes=[int])(mesh.devices),
        tuple(mesh.axis_names),
        tuple(sharding.spec),
    )


def _rebuild_sharding(description: _ShardingDescription | None) -> NamedSharding | None:
    """The sharding on this process's devices of the same ids; ``None`` if some are missing."""
    if description is None:
        return None
    devices = {device.id: device for device in jax.devices()}
    if not set(description.device_ids.flat) <= set(devices):
        return None
    mesh_devices = np.vectorize(devices.__getitem__, otypes=[object])(description.device_ids)
    return NamedSharding(
        Mesh(mesh_devices, description.axis_names), PartitionSpec(*description.spec)
    )


def reduce_keeping_layout(state: tuple) -> tuple:
    """``__reduce__`` of a NamedTuple of arrays that keeps their layout over devices.

    An array pickles by value and comes back on one device. The layout of each array split
    or replicated over several devices is stored by device ids and put back on loading where
    this process has those devices, so a run continued after unpickling stays on its mesh.
    """
    layouts = [
        _describe_sharding(leaf.sharding)
        if isinstance(getattr(leaf, "sharding", None), NamedSharding)
        and len(leaf.sharding.device_set) > 1
        else None
        for leaf in jax.tree.leaves(state)
    ]
    return _with_layout, (type(state), tuple(state), layouts)


def _with_layout(cls: type, fields: tuple, layouts: list) -> Any:
    """Undo :func:`reduce_keeping_layout`."""
    leaves, treedef = jax.tree.flatten(cls(*fields))
    placed = []
    for leaf, layout in zip(leaves, layouts, strict=True):
        sharding = _rebuild_sharding(layout)
        placed.append(leaf if sharding is None else jax.device_put(leaf, sharding))
    return jax.tree.unflatten(treedef, placed)


def latent_template(init_params: Any) -> Any:
    """One walker's unconstrained values as zeros on the host: what ``ravel_pytree`` needs.

    Args:
        init_params: Initial values with the walker axis first.

    Returns:
        A pytree of ``numpy`` zeros of one walker's shapes and dtypes (picklable).
    """
    return jax.tree.map(
        lambda leaf: np.zeros(np.shape(leaf)[1:], jax.numpy.result_type(leaf)), init_params
    )


def kernel_getstate(attributes: dict) -> dict:
    """``FlowMCKernel.__getstate__``: its attributes with every closure made picklable.

    Args:
        attributes: The kernel's ``__dict__``.

    Returns:
        A picklable copy.
    """
    state = dict(attributes)
    # The optax optimizer is made of closures: rebuilt from the learning rate on loading.
    state["_optimizer"] = None
    state["_round_options"] = {
        key: value for key, value in state["_round_options"].items() if key != "optimizer"
    }
    if state["_config"] is not None:  # its batch sharding is the walkers' (rebuilt on loading)
        state["_config"] = state["_config"]._replace(optimizer=None, batch_sharding=None)
    # The potential and postprocessing of a model are closures over the model's arguments:
    # `MCMC` calls `init` again, which rebuilds them, when `_sample_fn` is None.
    state["_potential_fn_gen"] = None
    state["_postprocess_fn"] = None
    if state["_model"] is not None:
        state["_sample_fn"] = None
    state["_unravel"] = None  # rebuilt from `_latent_template`
    state["_walker_sharding"] = _describe_sharding(state["_walker_sharding"])
    for name in ("_flow", "_flow_static"):
        if state[name] is not None:
            state[name] = _PickledFlow(dumps_flow(state[name]))
    return state


def kernel_setstate(state: dict, make_optimizer: Callable[[float], Any]) -> dict:
    """``FlowMCKernel.__setstate__``: undo :func:`kernel_getstate`.

    Args:
        state: What :func:`kernel_getstate` returned.
        make_optimizer: Builds the flow's optimizer from the learning rate.

    Returns:
        The kernel's attributes.
    """
    state = dict(state)
    optimizer = make_optimizer(state["_learning_rate"])
    state["_optimizer"] = optimizer
    state["_round_options"] = dict(state["_round_options"], optimizer=optimizer)
    state["_walker_sharding"] = _rebuild_sharding(state["_walker_sharding"])
    if state["_config"] is not None:
        state["_config"] = state["_config"]._replace(
            optimizer=optimizer, batch_sharding=state["_walker_sharding"]
        )
    if state.get("_latent_template") is not None:
        state["_unravel"] = ravel_pytree(state["_latent_template"])[1]
    for name in ("_flow", "_flow_static"):
        if isinstance(state[name], _PickledFlow):
            state[name] = loads_flow(state[name].data)
    return state
