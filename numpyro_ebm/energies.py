"""Energy-based models and their place in a NumPyro model.

An *energy* is any callable mapping one point ``x`` of shape ``(d,)`` to a scalar ``E(x)``, the
negative log of an unnormalised density: p(x) ∝ exp(-E(x)). Learnable energies are equinox
modules (:class:`MLPEnergy`), but a plain function works everywhere in the library.

An energy enters a NumPyro model through :func:`energy_factor`, a ``numpyro.factor`` whose site
is marked ``infer={"ebm_factor": True}`` so that diagnostics can tell it apart from a genuine
likelihood (see :func:`numpyro_ebm.diagnostics.from_numpyro`). :func:`ebm_model` is the ready-made
model whose only latent ``"x"`` has density ∝ exp(-E(x)), optionally tilted by a Gaussian base
density as in [A, Eq. 6].

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, ICML 2023 SPIGM workshop, arXiv:2306.00684.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.typing import ArrayLike
from numpyro.distributions import constraints

from numpyro_ebm._checks import positive_float, positive_int, typed_key

EBM_FACTOR_KEY = "ebm_factor"
"""Key of the ``infer`` dict that marks a sample site as an EBM factor."""


# Module-level activations so that an MLPEnergy pickles: `jax.nn.silu` is a jitted object that
# pickle cannot find by name, and eqx.nn.MLP's default final activation is a lambda.
def _silu(x: jax.Array) -> jax.Array:
    return jax.nn.silu(x)


def _identity(x: jax.Array) -> jax.Array:
    return x


class MLPEnergy(eqx.Module):
    """Multilayer-perceptron energy E_θ: R^d → R, zero everywhere at initialisation.

    The last layer starts with zero weights and bias, so E_θ ≡ 0 and the tilted model of
    [A, Eq. 6] starts equal to the flow's base density (METHOD §3, "E ≡ 0 at start"). The default
    activation is smooth (SiLU) so that the MALA steps, which use ∇ₓE, see a continuous gradient.
    With the defaults and ``dim=2`` it has about 8.6k parameters, the size of [A]'s 2-D toy EBM.

    Args:
        dim: Dimension d of a point x.
        width: Number of units of each hidden layer.
        depth: Number of hidden layers.
        activation: Elementwise activation of the hidden layers; SiLU (``jax.nn.silu``) by
            default.
        key: PRNG key for the weights' initialisation.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> energy = MLPEnergy(2, key=jax.random.key(0))
        >>> energy(jnp.array([0.5, -1.0]))
        Array(0., dtype=float32)
    """

    mlp: eqx.nn.MLP
    dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        width: int = 64,
        depth: int = 3,
        activation: Callable[[jax.Array], jax.Array] = _silu,
        key: jax.Array,
    ):
        self.dim = positive_int("dim", dim)
        self.width = positive_int("width", width)
        self.depth = positive_int("depth", depth)
        if not callable(activation):
            raise TypeError(f"`activation` must be callable, got {type(activation).__name__}.")
        mlp = eqx.nn.MLP(
            in_size=self.dim,
            out_size="scalar",
            width_size=self.width,
            depth=self.depth,
            activation=activation,
            final_activation=_identity,
            key=typed_key(key),
        )
        last = mlp.layers[-1]
        self.mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            mlp,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Energy of one point.

        Args:
            x: A point of shape ``(dim,)``.

        Returns:
            The scalar energy E_θ(x).
        """
        x = jnp.asarray(x)
        if x.shape != (self.dim,):
            raise ValueError(
                f"MLPEnergy expects one point of shape ({self.dim},), got shape {x.shape}; "
                "use jax.vmap for a batch."
            )
        return self.mlp(x)


def base_log_prob(x: ArrayLike, scale: float | ArrayLike) -> jax.Array:
    """Log density of the isotropic Gaussian base N(0, scale^2 I) over the last axis of ``x``.

    This is rho of the tilted EBM [A, Eq. 6].

    Args:
        x: Points of shape ``(..., d)``.
        scale: Standard deviation sigma of each coordinate.

    Returns:
        log rho(x), of shape ``x.shape[:-1]``.

    Example:
        >>> import jax.numpy as jnp
        >>> base_log_prob(jnp.zeros(2), 1.0)  # -log(2π)
        Array(-1.837877, dtype=float32)
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"`x` must have a last (event) axis, got shape {x.shape}.")
    dim = x.shape[-1]
    return -0.5 * jnp.sum(jnp.square(x / scale), axis=-1) - dim * (
        jnp.log(scale) + 0.5 * math.log(2 * math.pi)
    )


class TiltedEnergy(eqx.Module):
    """Total energy of the tilted EBM [A, Eq. 6]: E_θ(x) - log rho(x), rho = N(0, sigma^2 I).

    The tilted model p_θ(x) ∝ exp(-E_θ(x)) rho(x) is what flow-assisted training fits; rho is
    the flow's base density, so with E_θ ≡ 0 and an identity flow, model and flow start equal. The
    wrapped ``energy``'s arrays are this module's only arrays: ``eqx.partition`` of a
    ``TiltedEnergy`` gives the parameters of ``energy``.

    Args:
        energy: The energy E_θ, a callable from one point of shape ``(d,)`` to a scalar.
        base_scale: Standard deviation sigma of the base density rho.

    Example:
        >>> import jax.numpy as jnp
        >>> tilted = TiltedEnergy(lambda x: jnp.sum(x), base_scale=1.0)
        >>> tilted(jnp.zeros(2))  # 0 + log(2π)
        Array(1.837877, dtype=float32)
    """

    energy: Callable[[jax.Array], jax.Array]
    base_scale: float = eqx.field(static=True)

    def __init__(self, energy: Callable[[jax.Array], jax.Array], base_scale: float):
        if not callable(energy):
            raise TypeError(f"`energy` must be callable, got {type(energy).__name__}.")
        self.energy = energy
        self.base_scale = positive_float("base_scale", base_scale)

    @classmethod
    def from_parts(
        cls, energy_params: Any, energy_static: Any, base_scale: float
    ) -> "TiltedEnergy":
        """The tilted energy of ``eqx.combine(energy_params, energy_static)``.

        Args:
            energy_params: Array part of the energy (what training differentiates).
            energy_static: The rest of the energy.
            base_scale: Standard deviation sigma of the base density rho.

        Returns:
            The tilted energy.
        """
        return cls(eqx.combine(energy_params, energy_static), base_scale)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Total energy of one point.

        Args:
            x: A point of shape ``(d,)``.

        Returns:
            The scalar E_θ(x) - log rho(x).
        """
        x = jnp.asarray(x)
        return self.energy(x) - base_log_prob(x, self.base_scale)


def is_ebm_factor(site: dict) -> bool:
    """Whether a NumPyro trace site (or message) is an EBM factor added by :func:`energy_factor`.

    Args:
        site: A site of a ``numpyro.handlers.trace``, or a message seen by a handler.

    Returns:
        True for a sample site marked ``infer={"ebm_factor": True}``.

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro import handlers
        >>> model = lambda: energy_factor("energy", jnp.sum, jnp.ones(2))
        >>> trace = handlers.trace(model).get_trace()
        >>> is_ebm_factor(trace["energy"])
        True
    """
    return site.get("type") == "sample" and bool(site.get("infer", {}).get(EBM_FACTOR_KEY, False))


def energy_factor(name: str, energy: Callable[[jax.Array], jax.Array], x: ArrayLike) -> None:
    """Add the factor exp(-E(x)) to the enclosing NumPyro model, marked as an EBM factor.

    Same semantics as ``numpyro.factor(name, -energy(x))``: an observed sample site of a ``Unit``
    distribution whose log density is -E(x), so it counts in the model's potential energy. The
    site is also marked ``infer={"ebm_factor": True}``: NumPyro and ArviZ treat every observed
    site as a likelihood term (METHOD §6), and the marker lets
    :func:`numpyro_ebm.diagnostics.from_numpyro` keep the EBM out of the log-likelihood and
    observed-data groups.

    Args:
        name: Name of the site.
        energy: Callable from one point of shape ``(d,)`` to a scalar energy.
        x: One point of shape ``(d,)`` (or a scalar, a point of a one-dimensional energy),
            or points of shape ``(*batch, d)``, e.g. ``(n, d)`` or one per cell of nested
            plates: the energy is vmapped and the site gets batch shape ``batch``.

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro.infer.util import log_density
        >>> model = lambda: energy_factor("energy", lambda x: jnp.sum(x**2), jnp.ones((3, 2)))
        >>> log_density(model, (), {}, {})[0]  # -Σᵢ E(xᵢ)
        Array(-6., dtype=float32)
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string (the site's name), got {name!r}.")
    if not callable(energy):
        raise TypeError(f"`energy` must be callable, got {type(energy).__name__}.")
    x = jnp.asarray(x)
    batch_shape = x.shape[:-1]
    if x.ndim <= 1:
        energy_value = jnp.asarray(energy(x))
    else:
        energy_value = jnp.asarray(jax.vmap(energy)(x.reshape(-1, x.shape[-1])))
    expected_shape = (math.prod(batch_shape),) if batch_shape else ()
    if energy_value.shape != expected_shape:
        per_point = energy_value.shape[len(expected_shape) :]
        raise ValueError(
            f"expected `energy` to map one point of shape {x.shape[-1:]} to a scalar, got an "
            f"array of shape {per_point} per point (x has shape {x.shape})."
        )
    energy_value = energy_value.reshape(batch_shape)
    # Mirrors numpyro.primitives.factor, plus the EBM marker in `infer`.
    unit_dist = dist.Unit(-energy_value)
    numpyro.sample(
        name,
        unit_dist,
        obs=unit_dist.sample(None),
        infer={"is_auxiliary": True, EBM_FACTOR_KEY: True},
    )


def ebm_model(
    energy: Callable[[jax.Array], jax.Array],
    dim: int,
    *,
    base_scale: float | None = None,
) -> Callable[..., None]:
    """NumPyro model whose latent ``"x"`` has density ∝ exp(-E(x)) (tilted by rho if asked).

    The model has one latent site ``"x"`` of shape ``(dim,)`` with an improper flat prior over
    R^d, and one EBM factor site ``"energy"`` (see :func:`energy_factor`) with total energy
    E(x), or E(x) - log rho(x) with rho = N(0, base_scale^2 I) when ``base_scale`` is given (the
    tilted EBM of [A, Eq. 6]). Its potential energy at x is therefore exactly that total energy.

    The returned ``model(energy_params=None)`` uses ``energy`` as given when called without
    arguments. For training, where the energy changes between MCMC runs without recompiling, pass
    the array part of an equinox energy as ``energy_params`` (e.g. through ``MCMC.run``'s model
    arguments): the model then uses ``eqx.combine(energy_params, static)``, where ``static`` is
    the non-array part of ``energy`` (so ``energy`` may be the full module or only its static
    part).

    Args:
        energy: Callable from one point of shape ``(dim,)`` to a scalar energy, typically an
            :class:`equinox.Module` such as :class:`MLPEnergy`.
        dim: Dimension of x.
        base_scale: Standard deviation of the Gaussian tilt rho, or None for no tilt.

    Returns:
        The NumPyro model ``model(energy_params=None)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from numpyro.infer.util import potential_energy
        >>> model = ebm_model(lambda x: 0.5 * jnp.sum(x**2), 2)
        >>> potential_energy(model, (), {}, {"x": jnp.array([1.0, 2.0])})
        Array(2.5, dtype=float32)
    """
    if not callable(energy):
        raise TypeError(f"`energy` must be callable, got {type(energy).__name__}.")
    dim = positive_int("dim", dim)
    if base_scale is not None:
        base_scale = positive_float("base_scale", base_scale)
    _, energy_static = eqx.partition(energy, eqx.is_inexact_array)
    return _EBMModel(energy, energy_static, dim, base_scale)


@dataclasses.dataclass(frozen=True, eq=False)
class _EBMModel:
    """The model of :func:`ebm_model`; a module-level class (not a closure), so it pickles.

    NumPyro users pickle ``MCMC`` objects, which hold their kernel's model.
    """

    energy: Callable[[jax.Array], jax.Array]
    energy_static: Any
    dim: int
    base_scale: float | None

    def __call__(self, energy_params: Any = None) -> None:
        current = (
            self.energy if energy_params is None else eqx.combine(energy_params, self.energy_static)
        )
        if self.base_scale is not None:
            current = TiltedEnergy(current, self.base_scale)
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real_vector, (), (self.dim,)))
        energy_factor("energy", current, x)
