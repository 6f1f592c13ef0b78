"""Energy networks beyond the MLP: checking a user's own, and a convolutional energy for images.

Training accepts any :class:`equinox.Module` that maps one point of shape ``(d,)`` to a scalar
float; :func:`check_energy` says why a module does not. Beside
:class:`~numpyro_ebm.energies.MLPEnergy` the library ships :class:`ConvEnergy`, for images
flattened to ``(d,)`` (e.g. 8×8 digits, ``d = 64``). How a trained network is saved and rebuilt
without pickle is in :mod:`~numpyro_ebm.training.energy_specs`.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from numpyro_ebm._checks import positive_int, typed_key

__all__ = ["ConvEnergy", "check_energy"]


def check_energy(energy: Any, dim: int) -> eqx.Module:
    """Check that ``energy`` is a trainable equinox module from ``(dim,)`` to a scalar float.

    The call is traced with :func:`equinox.filter_eval_shape` on a point of shape ``(dim,)``
    (shapes only, no arithmetic), so checking a large network costs nothing.

    Args:
        energy: The candidate energy E_θ.
        dim: Dimension d of a point.

    Returns:
        ``energy`` itself if it holds no NumPy array; otherwise a copy with them as JAX arrays
        (weights drawn with ``np.random`` are float64 arrays that JAX trains as float32: a
        checkpoint written from them would not load into a freshly built module otherwise).

    Raises:
        TypeError: If it is not an ``eqx.Module``, not callable, or returns something other than
            a floating-point array.
        ValueError: If it has no floating-point array to train, fails on a point of shape
            ``(dim,)`` (the underlying error is chained), or does not return a scalar.

    Example:
        >>> import jax
        >>> from numpyro_ebm.energies import MLPEnergy
        >>> energy = check_energy(MLPEnergy(3, key=jax.random.key(0)), 3)
        >>> check_energy(energy, 4)
        Traceback (most recent call last):
        ...
        ValueError: expected `energy` to accept one point of shape (4,), got MLPEnergy, which
        raised ValueError: MLPEnergy expects one point of shape (3,), got shape (4,); ...
    """
    dim = positive_int("dim", dim)
    name = type(energy).__name__
    if not isinstance(energy, eqx.Module):
        raise TypeError(
            f"expected `energy` to be an equinox Module mapping a point of shape ({dim},) to a "
            f"scalar, got {name}; wrap a function with learnable arrays in an eqx.Module"
        )
    if not callable(energy):
        raise TypeError(f"expected `energy` to be callable (a __call__ method), got {name}")
    if not any(eqx.is_inexact_array(leaf) for leaf in jax.tree.leaves(energy)):
        raise ValueError(
            f"expected `energy` to hold at least one floating-point array to train, got {name} "
            "with none"
        )
    point = jax.ShapeDtypeStruct((dim,), jnp.result_type(float))
    try:
        out = eqx.filter_eval_shape(lambda module, x: module(x), energy, point)
    except Exception as error:  # any failure of the user's code says the same thing
        raise ValueError(
            f"expected `energy` to accept one point of shape ({dim},), got {name}, which raised "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"expected `energy` to return one scalar array, got {name} returning "
            f"{type(out).__name__}"
        )
    if out.shape != ():
        raise ValueError(
            f"expected `energy` to return a scalar (shape ()) for a point of shape ({dim},), "
            f"got {name} returning shape {out.shape}; vmap over a batch outside the module"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"expected `energy` to return a float, got {name} returning {out.dtype}")
    if any(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(energy)):
        energy = jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, energy)
    return energy


def _positive_ints(name: str, values: Any, lengths: tuple[int, ...]) -> tuple[int, ...]:
    """``values`` as a tuple of positive ints of one of ``lengths`` (0 in lengths: any >= 1)."""
    ok = isinstance(values, list | tuple) and (len(values) in lengths or 0 in lengths)
    ok = ok and len(values) >= 1
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    if not ok:
        wanted = "a non-empty sequence" if 0 in lengths else f"a sequence of length {lengths}"
        raise ValueError(f"`{name}` must be {wanted} of positive integers, got {values!r}")
    return tuple(int(v) for v in values)


class ConvEnergy(eqx.Module):
    """Convolutional energy E_θ for images flattened to ``(d,)``, zero at initialisation.

    A point ``x`` of shape ``(d,)`` is reshaped to ``image_shape`` (``(h, w)``, or ``(c, h, w)``
    channels first) and goes through 3×3 convolutions with SiLU activations (smooth, so that
    the samplers' ∇ₓE is continuous): the first keeps the resolution, each further one halves
    it (stride 2). A linear head maps the features to the scalar energy; it starts at zero, so
    E_θ ≡ 0 and the tilted model starts equal to the base density, as for
    :class:`~numpyro_ebm.energies.MLPEnergy`. With the defaults on 8×8 images it has about 5.3k
    parameters.

    Args:
        image_shape: ``(h, w)`` or ``(c, h, w)``; ``d = c·h·w``.
        channels: Output channels of each convolution.
        key: PRNG key for the weights' initialisation.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> energy = ConvEnergy((8, 8), key=jax.random.key(0))
        >>> energy.dim, energy(jnp.ones(64))
        (64, Array(0., dtype=float32))
    """

    convs: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.Linear
    image_shape: tuple[int, ...] = eqx.field(static=True)
    channels: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, ...],
        *,
        channels: tuple[int, ...] = (16, 32),
        key: jax.Array,
    ):
        self.image_shape = _positive_ints("image_shape", image_shape, (2, 3))
        self.channels = _positive_ints("channels", channels, (0,))
        keys = jax.random.split(typed_key(key), len(self.channels) + 1)
        in_channels = 1 if len(self.image_shape) == 2 else self.image_shape[0]
        height, width = self.image_shape[-2:]
        convs = []
        for index, (out_channels, layer_key) in enumerate(zip(self.channels, keys, strict=False)):
            stride = 1 if index == 0 else 2
            convs.append(
                eqx.nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, key=layer_key)
            )
            # A 3×3 kernel with padding 1 and stride s maps n pixels to floor((n - 1)/s) + 1.
            height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
            in_channels = out_channels
        self.convs = tuple(convs)
        head = eqx.nn.Linear(in_channels * height * width, "scalar", key=keys[-1])
        self.head = eqx.tree_at(
            lambda h: (h.weight, h.bias), head, (jnp.zeros_like(head.weight), jnp.zeros(()))
        )

    @property
    def dim(self) -> int:
        """Dimension d of a flattened image."""
        return math.prod(self.image_shape)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Energy of one flattened image.

        Args:
            x: A point of shape ``(dim,)``.

        Returns:
            The scalar energy E_θ(x).
        """
        x = jnp.asarray(x)
        if x.shape != (self.dim,):
            raise ValueError(
                f"ConvEnergy expects one flattened image of shape ({self.dim},) (image_shape "
                f"{self.image_shape}), got shape {x.shape}; use jax.vmap for a batch."
            )
        features = x.reshape((-1, *self.image_shape[-2:]))
        for conv in self.convs:
            features = jax.nn.silu(conv(features))
        return self.head(features.reshape(-1))
