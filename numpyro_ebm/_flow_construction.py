"""Building the default proposal flow as one compiled program (see :mod:`numpyro_ebm.flows`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import paramax
from flowjax.bijections import AbstractBijection, Affine, Coupling, MaskedAutoregressive
from flowjax.distributions import AbstractDistribution, StandardNormal, Transformed
from flowjax.flows import coupling_flow, masked_autoregressive_flow
from flowjax.utils import get_ravelled_pytree_constructor

#: Scale of the final conditioner layer at initialisation: the flow starts within about 1e-2
#: of the identity map, as in [A]'s high-dimensional runs ("near-zero initial coupling weights").
_INITIAL_COUPLING_SCALE = 1e-2


def is_non_trainable(leaf: Any) -> bool:
    """Whether ``leaf`` is a frozen (``paramax.NonTrainable``) part of a flow."""
    return isinstance(leaf, paramax.NonTrainable)


def shrink_final_conditioner_layers(flow: AbstractDistribution) -> AbstractDistribution:
    """Scale the last layer of every coupling conditioner so the flow starts near identity."""

    def shrink(node: Any) -> Any:
        if not isinstance(node, eqx.nn.MLP):
            return node
        final = node.layers[-1]
        # A masked autoregressive conditioner (dim == 1) wraps its weight in a
        # `paramax.Parameterize` (weight, mask): scale the float arrays inside, not the wrapper.
        weight = jax.tree.map(
            lambda leaf: leaf * _INITIAL_COUPLING_SCALE if eqx.is_inexact_array(leaf) else leaf,
            final.weight,
        )
        return eqx.tree_at(
            lambda mlp: (mlp.layers[-1].weight, mlp.layers[-1].bias),
            node,
            (weight, jnp.zeros_like(final.bias)),
        )

    return jax.tree.map(shrink, flow, is_leaf=lambda node: isinstance(node, eqx.nn.MLP))


class FlowSpec(NamedTuple):
    """What fixes the structure of a default flow (hashable: builders are cached by it).

    Attributes:
        dim: Dimension of the space.
        flow_layers: Coupling (or, in one dimension, autoregressive) layers.
        nn_width: Width of each conditioner network.
        nn_depth: Hidden layers of each conditioner network.
        make_elementwise: Builds the elementwise transformer from ``elementwise_options``.
        elementwise_options: ``(name, value)`` pairs.
    """

    dim: int
    flow_layers: int
    nn_width: int
    nn_depth: int
    make_elementwise: Callable[..., AbstractBijection]
    elementwise_options: tuple[tuple[str, Any], ...]


def compiled_flow_builder(
    spec: FlowSpec,
) -> Callable[[jax.Array, jax.Array, jax.Array], AbstractDistribution]:
    """The builder ``(key, loc, scale) -> flow`` of ``default_flow``, one compiled program.

    Built eagerly, the flow's initialisation runs some fifty small operations that each
    compile on first use: about 1.7 s on 2 CPU cores for a two-dimensional flow, against
    0.9 s for this (a tenth of a short run of a small model). Traced, though, flowjax's
    layers keep the transformer's initial parameters in a closure (``transformer_constructor``)
    as tracers: those closures are replaced by one made outside the trace, from the same
    transformer, which is what an eager build makes. Flows of one builder share it.

    Args:
        spec: The flow's structure.

    Returns:
        The builder, cached per structure and default float type (``jax_enable_x64``: the
        transformer is made in it, so a builder made under one must not serve the other);
        not cached when called under a trace (``default_flow`` inside a user's ``jit``),
        whose tracers it holds and which must not outlive it.
    """
    if isinstance(jnp.zeros(()), jax.core.Tracer):
        return _make_builder(spec)
    return _cached_builder(spec, jnp.result_type(float).name)


@functools.lru_cache(maxsize=32)
def _cached_builder(spec: FlowSpec, float_dtype: str) -> Callable:
    del float_dtype  # a key of the cache only
    return _make_builder(spec)


def _make_builder(spec: FlowSpec) -> Callable:
    dim, flow_layers, nn_width, nn_depth, make_elementwise, elementwise_options = spec
    elementwise = eqx.filter_jit(lambda: make_elementwise(**dict(elementwise_options)))()
    constructor, _ = get_ravelled_pytree_constructor(
        elementwise, filter_spec=eqx.is_inexact_array, is_leaf=is_non_trainable
    )
    build_stack = coupling_flow if dim > 1 else masked_autoregressive_flow

    @eqx.filter_jit
    def build_traced(key: jax.Array, loc: jax.Array, scale: jax.Array) -> AbstractDistribution:
        stack = build_stack(
            key,
            base_dist=StandardNormal((dim,)),
            transformer=elementwise,
            flow_layers=flow_layers,
            nn_width=nn_width,
            nn_depth=nn_depth,
        )
        standardise = Affine(
            jnp.broadcast_to(loc, (dim,)), jnp.maximum(jnp.broadcast_to(scale, (dim,)), 1e-12)
        )
        return Transformed(shrink_final_conditioner_layers(stack), standardise)

    return lambda key, loc, scale: _with_transformer_constructor(
        build_traced(key, loc, scale), constructor
    )


def _with_transformer_constructor(flow: AbstractDistribution, constructor: Callable) -> Any:
    """``flow`` with each coupling or autoregressive layer's transformer from ``constructor``."""

    def is_layer(node: Any) -> bool:
        return isinstance(node, Coupling | MaskedAutoregressive)

    def replace(node: Any) -> Any:
        if not is_layer(node):
            return node
        return eqx.tree_at(lambda layer: layer.transformer_constructor, node, constructor)

    return jax.tree.map(replace, flow, is_leaf=is_layer)
