"""Preprocessing that travels with a run: dequantisation and standardisation of raw data.

A model is trained on ``z = (x + u - shift) / scale``, where ``x`` is the user's raw data,
``u ~ U[0, 1)^d`` is dequantisation noise (integer data only: pixel counts, photon counts) and
``shift``, ``scale`` are the per-coordinate mean and standard deviation of the (dequantised)
training split. The map is affine, so a density on ``z`` is a density on raw units through
``log p_x(x) = log p_z(z) + log |det ∂z/∂x| = log p_z(z) - Σ log scale``.

For integer data the raw-unit density is that of ``x + u``: its mean log-likelihood on
dequantised held-out points is a lower bound on the mean log-probability of the integers
(Theis, van den Oord & Bethge 2016, "A note on the evaluation of generative models", §3.1).

Example:
    >>> import numpy as np
    >>> prep = Preprocessing.fit(np.array([[0.5, 10.5], [2.5, 30.5]]))
    >>> prep.transform(np.array([[1.5, 20.5]])).tolist()
    [[0.0, 0.0]]
    >>> round(prep.log_det_jacobian, 4)  # -log(1) - log(10)
    -2.3026
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from numpyro_ebm._checks import typed_key

__all__ = ["PREPROCESS_CHOICES", "Preprocessing", "is_integer_valued"]

#: What ``TrainConfig.preprocess`` accepts: ``"auto"`` standardises data without a known
#: density and dequantises it when integer-valued; ``"standardize"`` never dequantises;
#: ``"none"`` trains on the data as given.
PREPROCESS_CHOICES = ("auto", "standardize", "none")

# A coordinate whose standard deviation is at most this fraction of its mean's size (constant
# columns, such as the always-blank border pixels of digits without dequantisation, whose spread
# is 0 or the round-off of their mean) is shifted but not scaled: dividing by ~0 would blow that
# round-off up to O(1). Relative, so that data of any unit are scaled: an absolute floor of
# 1e-8 left a wavelength in metres (5e-7 ± 3e-9) in raw units, and its density 20 nats wrong.
_ROUND_OFF = 1e-10


def is_integer_valued(data: np.ndarray) -> bool:
    """Whether every value of ``data`` is an integer (counts, pixel levels, labels).

    Example:
        >>> is_integer_valued(np.array([[0.0, 3.0]])), is_integer_valued(np.array([[0.5]]))
        (True, False)
    """
    data = np.asarray(data)
    return bool(np.issubdtype(data.dtype, np.integer) or np.all(np.mod(data, 1.0) == 0.0))


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """The affine map from raw data to the model's coordinates, with optional dequantisation.

    Attributes:
        shift: Per-coordinate shift, shape ``(d,)`` (the training split's mean).
        scale: Per-coordinate scale, shape ``(d,)``, positive (its standard deviation).
        dequantize: Whether raw points are integers that get ``U[0, 1)`` noise added before
            the affine map.
    """

    shift: np.ndarray
    scale: np.ndarray
    dequantize: bool = False

    def __post_init__(self):
        shift = np.asarray(self.shift, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        if shift.ndim != 1 or scale.shape != shift.shape:
            raise ValueError(
                f"expected `shift` and `scale` of one shape (d,), got {shift.shape} and "
                f"{scale.shape}"
            )
        if not (np.all(np.isfinite(shift)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("expected a finite `shift` and a finite, positive `scale`")
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "dequantize", bool(self.dequantize))

    @property
    def dim(self) -> int:
        """The dimension d of a point."""
        return int(self.shift.shape[0])

    @property
    def is_identity(self) -> bool:
        """Whether the map leaves data unchanged."""
        return not self.dequantize and bool(np.all(self.shift == 0) and np.all(self.scale == 1))

    @property
    def log_det_jacobian(self) -> float:
        """``log |det ∂z/∂x| = -Σ log scale``: add it to a log density on ``z`` for raw units."""
        return float(-np.sum(np.log(self.scale)))

    @classmethod
    def identity(cls, dim: int) -> Preprocessing:
        """The map that leaves ``d``-dimensional data as it is."""
        return cls(np.zeros(dim), np.ones(dim))

    @classmethod
    def fit(
        cls,
        data: np.ndarray,
        *,
        dequantize: bool | None = None,
        rng_key: jax.Array | None = None,
    ) -> Preprocessing:
        """Standardise ``data`` (the training split), dequantising it first if integer-valued.

        Args:
            data: Raw training points ``(n, d)``.
            dequantize: Add ``U[0, 1)`` noise before standardising; ``None`` decides by
                :func:`is_integer_valued`.
            rng_key: Key of the dequantisation noise whose moments are used (the shift of
                dequantised data is that of the integers plus 1/2).

        Returns:
            The fitted map.
        """
        data = np.asarray(data, dtype=np.float64)
        if dequantize is None:
            dequantize = is_integer_valued(data)
        if dequantize:
            key = jax.random.key(0) if rng_key is None else rng_key
            data = data + np.asarray(jax.random.uniform(typed_key(key), data.shape))
        shift, scale = data.mean(axis=0), data.std(axis=0)
        varies = scale > _ROUND_OFF * np.abs(shift)
        return cls(shift, np.where(varies & (scale > 0), scale, 1.0), dequantize)

    def dequantized(self, x: np.ndarray, rng_key: jax.Array) -> np.ndarray:
        """Raw points with their dequantisation noise added (unchanged if not dequantising).

        Args:
            x: Raw points ``(n, d)``.
            rng_key: Key of the noise.

        Returns:
            ``x + u`` with ``u ~ U[0, 1)``, or ``x``.
        """
        x = np.asarray(x, dtype=np.float64)
        if not self.dequantize:
            return x
        return x + np.asarray(jax.random.uniform(typed_key(rng_key), x.shape))

    def transform(self, x: np.ndarray, rng_key: jax.Array | None = None) -> np.ndarray:
        """Raw points to the model's coordinates.

        Args:
            x: Raw points ``(n, d)``.
            rng_key: Key of the dequantisation noise; required when dequantising.

        Returns:
            ``(x + u - shift) / scale`` as float32.

        Raises:
            ValueError: If the points' dimension is not the map's, or dequantisation has no key.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (n, {self.dim}), got shape {x.shape}")
        if self.dequantize:
            if rng_key is None:
                raise ValueError("expected an `rng_key` for the dequantisation noise, got None")
            x = self.dequantized(x, rng_key)
        return ((x - self.shift) / self.scale).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """The model's coordinates back to raw units (dequantised values, not rounded)."""
        z = np.asarray(z, dtype=np.float64)
        return z * self.scale + self.shift

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the map."""
        return {
            "shift": self.shift.tolist(),
            "scale": self.scale.tolist(),
            "dequantize": self.dequantize,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Preprocessing:
        """Rebuild a map written by :meth:`to_dict`.

        Raises:
            ValueError: If the record lacks a field or holds invalid values.
        """
        missing = sorted({"shift", "scale", "dequantize"} - set(record))
        if missing:
            raise ValueError(f"expected preprocessing fields {missing}, got {sorted(record)}")
        return cls(np.asarray(record["shift"]), np.asarray(record["scale"]), record["dequantize"])
