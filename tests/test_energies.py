import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density, potential_energy

from numpyro_ebm.energies import (
    MLPEnergy,
    TiltedEnergy,
    base_log_prob,
    ebm_model,
    energy_factor,
    is_ebm_factor,
)


def _perturbed(energy, key, scale=0.3):
    """Energy with every array shifted by noise, so the zero-initialised last layer is not zero."""
    params, static = eqx.partition(energy, eqx.is_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        p + scale * jax.random.normal(k, p.shape, p.dtype)
        for p, k in zip(leaves, keys, strict=True)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _quadratic(x):
    return 0.5 * jnp.sum(x**2)


class _ScaledQuadratic(eqx.Module):
    precision: jax.Array

    def __call__(self, x):
        return 0.5 * self.precision * jnp.sum(x**2)


# ---------------------------------------------------------------- MLPEnergy contracts


def test_mlp_energy_is_zero_at_start_and_scalar():
    energy = MLPEnergy(3, width=16, depth=2, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (5, 3))
    assert energy(xs[0]).shape == ()
    np.testing.assert_array_equal(jax.vmap(energy)(xs), np.zeros(5))


def test_mlp_energy_hyperparameters_are_static():
    energy = MLPEnergy(2, width=8, depth=1, key=jax.random.key(0))
    params = eqx.filter(energy, eqx.is_array)
    leaves = jax.tree.leaves(params)
    # depth=1: two Linear layers, each a weight and a bias; nothing else is a leaf.
    assert len(leaves) == 4
    assert (energy.dim, energy.width, energy.depth) == (2, 8, 1)
    n_params = sum(leaf.size for leaf in leaves)
    assert n_params == 2 * 8 + 8 + 8 + 1


def test_mlp_energy_same_key_same_result_and_jit_equals_eager():
    x = jnp.array([0.3, -1.2])
    e1 = _perturbed(MLPEnergy(2, key=jax.random.key(3)), jax.random.key(4))
    e2 = _perturbed(MLPEnergy(2, key=jax.random.key(3)), jax.random.key(4))
    assert e1(x) == e2(x)
    np.testing.assert_allclose(eqx.filter_jit(e1)(x), e1(x), rtol=1e-6)


def test_mlp_energy_pickles():
    energy = _perturbed(MLPEnergy(2, width=8, key=jax.random.key(0)), jax.random.key(1))
    x = jnp.array([0.1, 0.2])
    assert pickle.loads(pickle.dumps(energy))(x) == energy(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "`dim` must be an integer >= 1, got 0"),
        ({"dim": 2.0}, "`dim` must be an integer >= 1, got 2.0"),
        ({"dim": True}, "`dim` must be an integer >= 1, got True"),
        ({"dim": 2, "width": -1}, "`width` must be an integer >= 1, got -1"),
        ({"dim": 2, "depth": 0}, "`depth` must be an integer >= 1, got 0"),
    ],
)
def test_mlp_energy_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPEnergy(**kwargs, key=jax.random.key(0))


def test_mlp_energy_rejects_wrong_point_shape():
    energy = MLPEnergy(2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape \(2,\), got shape \(3,\)"):
        energy(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"got shape \(4, 2\)"):
        energy(jnp.zeros((4, 2)))


# ---------------------------------------------------------------- gradients (maths oracles)


def _central_difference(f, x, eps):
    basis = np.eye(x.size)
    return np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in basis])


def test_mlp_energy_gradients_match_finite_differences():
    with jax.enable_x64(True):
        energy = _perturbed(MLPEnergy(3, width=16, key=jax.random.key(0)), jax.random.key(1))
        x = jax.random.normal(jax.random.key(2), (3,), dtype=jnp.float64)
        assert energy(x).dtype == jnp.float64
        # Central differences have O(eps^2) truncation error; eps = 1e-5 in float64 leaves
        # ~1e-10 truncation and ~1e-11 rounding, far below the 1e-6 tolerance.
        fd_x = _central_difference(lambda z: float(energy(z)), np.asarray(x), 1e-5)
        np.testing.assert_allclose(jax.grad(energy)(x), fd_x, rtol=1e-6, atol=1e-8)

        # Parameter gradient, checked along one random direction (what training uses).
        params, static = eqx.partition(energy, eqx.is_array)
        direction = eqx.filter(_perturbed(energy, jax.random.key(3), scale=1.0), eqx.is_array)
        direction = jax.tree.map(lambda d, p: d - p, direction, params)

        def along(t):
            shifted = jax.tree.map(lambda p, d: p + t * d, params, direction)
            return float(eqx.combine(shifted, static)(x))

        grads = eqx.filter_grad(lambda e: e(x))(energy)
        directional = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        )
        fd_t = (along(1e-5) - along(-1e-5)) / 2e-5
        np.testing.assert_allclose(directional, fd_t, rtol=1e-6)


def test_tilted_energy_gradient_adds_base_score():
    with jax.enable_x64(True):
        energy = _perturbed(MLPEnergy(2, width=8, key=jax.random.key(0)), jax.random.key(1))
        tilted = TiltedEnergy(energy, base_scale=0.7)
        x = jnp.array([0.4, -1.1])
        # -∇ log N(x; 0, sigma^2I) = x / sigma^2.
        np.testing.assert_allclose(
            jax.grad(tilted)(x), jax.grad(energy)(x) + x / 0.7**2, rtol=1e-12
        )
        fd_x = _central_difference(lambda z: float(tilted(z)), np.asarray(x), 1e-5)
        np.testing.assert_allclose(jax.grad(tilted)(x), fd_x, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- tilt


def test_base_log_prob_matches_numpyro_normal():
    x = jax.random.normal(jax.random.key(0), (4, 3))
    expected = dist.Normal(0.0, 1.7).log_prob(x).sum(-1)
    np.testing.assert_allclose(base_log_prob(x, 1.7), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        base_log_prob(jnp.float32(1.0), 1.0)


def test_tilted_energy_value_and_validation():
    x = jnp.array([0.5, 2.0])
    tilted = TiltedEnergy(_quadratic, base_scale=2.0)
    np.testing.assert_allclose(tilted(x), _quadratic(x) - base_log_prob(x, 2.0), rtol=1e-6)
    with pytest.raises(
        ValueError, match=r"`base_scale` must be a positive finite number, got 0\.0"
    ):
        TiltedEnergy(_quadratic, base_scale=0.0)
    with pytest.raises(ValueError, match="got inf"):
        TiltedEnergy(_quadratic, base_scale=float("inf"))
    with pytest.raises(TypeError, match="`energy` must be callable, got int"):
        TiltedEnergy(3, base_scale=1.0)


def test_tilted_energy_params_are_the_inner_energy_params():
    energy = MLPEnergy(2, width=8, key=jax.random.key(0))
    tilted = TiltedEnergy(energy, base_scale=1.0)
    assert jax.tree.structure(eqx.filter(tilted.energy, eqx.is_array)) == jax.tree.structure(
        eqx.filter(energy, eqx.is_array)
    )
    assert len(jax.tree.leaves(eqx.filter(tilted, eqx.is_array))) == len(
        jax.tree.leaves(eqx.filter(energy, eqx.is_array))
    )


# ---------------------------------------------------------------- energy_factor


def test_energy_factor_matches_numpyro_factor_and_is_marked():
    x = jnp.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])

    def ours():
        energy_factor("energy", _quadratic, x)

    def reference():
        numpyro.factor("energy", -jax.vmap(_quadratic)(x))

    np.testing.assert_allclose(
        log_density(ours, (), {}, {})[0], log_density(reference, (), {}, {})[0], rtol=1e-6
    )
    site = handlers.trace(ours).get_trace()["energy"]
    assert site["is_observed"]
    assert is_ebm_factor(site)
    assert site["fn"].batch_shape == (3,)
    assert not is_ebm_factor(handlers.trace(reference).get_trace()["energy"])


def test_energy_factor_single_point():
    x = jnp.array([1.0, 2.0])
    total = log_density(lambda: energy_factor("e", _quadratic, x), (), {}, {})[0]
    np.testing.assert_allclose(total, -2.5)


def test_energy_factor_in_nested_plates_and_on_a_scalar():
    # Regression: only (d,) and (n, d) were accepted, where numpyro.factor takes any shape.
    def grouped():
        with numpyro.plate("groups", 3, dim=-2), numpyro.plate("items", 4, dim=-1):
            x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            energy_factor("e", _quadratic, x)

    x = jnp.arange(24.0).reshape(3, 4, 2) / 10
    trace = handlers.trace(handlers.substitute(grouped, {"x": x})).get_trace()
    assert trace["e"]["fn"].batch_shape == (3, 4)
    np.testing.assert_allclose(trace["e"]["fn"].log_factor, -jax.vmap(jax.vmap(_quadratic))(x))
    scalar = log_density(lambda: energy_factor("e", lambda t: t**2, 3.0), (), {}, {})[0]
    assert float(scalar) == -9.0


def test_energy_factor_rejects_bad_input():
    message = r"one point of shape \(2,\) to a scalar, got an array of shape \(2,\) per point"
    with pytest.raises(ValueError, match=message + r" \(x has shape \(2, 3, 2\)\)"):
        handlers.trace(lambda: energy_factor("e", lambda x: x, jnp.zeros((2, 3, 2)))).get_trace()
    with pytest.raises(ValueError, match=message + r" \(x has shape \(2,\)\)"):
        handlers.trace(lambda: energy_factor("e", lambda x: x, jnp.zeros(2))).get_trace()
    with pytest.raises(TypeError, match="`energy` must be callable"):
        energy_factor("e", None, jnp.zeros(2))


# ---------------------------------------------------------------- ebm_model


def test_ebm_model_potential_energy_is_the_energy():
    x = jnp.array([1.0, -2.0])
    energy = _perturbed(MLPEnergy(2, width=8, key=jax.random.key(0)), jax.random.key(1))
    untilted = potential_energy(ebm_model(energy, 2), (), {}, {"x": x})
    np.testing.assert_allclose(untilted, energy(x), rtol=1e-6)
    tilted = potential_energy(ebm_model(energy, 2, base_scale=1.5), (), {}, {"x": x})
    np.testing.assert_allclose(tilted, energy(x) - base_log_prob(x, 1.5), rtol=1e-6)
    site_types = {
        name: (site["type"], site["is_observed"], is_ebm_factor(site))
        for name, site in handlers.trace(handlers.substitute(ebm_model(energy, 2), {"x": x}))
        .get_trace()
        .items()
    }
    assert site_types == {"x": ("sample", False, False), "energy": ("sample", True, True)}


def test_ebm_model_energy_params_argument():
    x = jnp.array([1.0, 2.0])
    energy = _ScaledQuadratic(jnp.float32(1.0))
    params, static = eqx.partition(energy, eqx.is_array)
    doubled = jax.tree.map(lambda p: 2 * p, params)
    for given in (energy, static):  # the full module or only its static part
        model = ebm_model(given, 2)
        np.testing.assert_allclose(potential_energy(model, (doubled,), {}, {"x": x}), 5.0)
    np.testing.assert_allclose(potential_energy(ebm_model(energy, 2), (), {}, {"x": x}), 2.5)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((_quadratic, 0), {}, ValueError, "`dim` must be an integer >= 1, got 0"),
        ((_quadratic, 2), {"base_scale": -1.0}, ValueError, "got -1.0"),
        ((None, 2), {}, TypeError, "`energy` must be callable, got NoneType"),
    ],
)
def test_ebm_model_rejects_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        ebm_model(*args, **kwargs)


def test_ebm_model_samples_exp_minus_energy_under_nuts():
    # Target exp(-|x|²/2) tilted by N(0, 1): N(0, I/2), so mean 0 and variance 1/2.
    num_samples = 1000
    mcmc = MCMC(
        NUTS(ebm_model(_quadratic, 2, base_scale=1.0)),
        num_warmup=300,
        num_samples=num_samples,
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0))
    x = np.asarray(mcmc.get_samples()["x"])
    assert x.shape == (num_samples, 2)
    # NUTS on a Gaussian gives ESS of order num_samples; even at ESS = 250 the standard error of
    # the mean is 0.045 and of the variance ~0.045, so 0.2 is over 4 standard errors.
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.2)
    np.testing.assert_allclose(x.var(0), 0.5, atol=0.2)
