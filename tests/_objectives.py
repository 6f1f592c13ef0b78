"""The Gaussian EBM that the training objectives' tests fit, and their shared checks.

Shared by ``test_objectives_sampling.py``, ``test_objectives_score.py`` and
``test_objectives_nce.py``; ``test_training.py`` builds its contract settings on
:data:`TRAINER_SETTINGS` and compares its resumed run with :func:`assert_same_run`.

The model is ``exp(-E_θ) ρ`` with ``ρ = N(0, σ_ρ² I)``: its precision is ``P + I/σ_ρ²`` and
its mean ``(P + I/σ_ρ²)⁻¹ P m``, both accounted for exactly (:func:`model_moments`).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _targets import GAUSS_MEAN, gaussian_draws
from _trees import leaves_equal

from numpyro_ebm.training import TrainConfig, Trainer
from numpyro_ebm.training.objectives import ObjectiveContext


class QuadraticEnergy(eqx.Module):
    """``E(x) = ½ (x - mean)ᵀ P (x - mean) + constant``, ``P = L Lᵀ + jitter I`` with
    ``L = tril(factor)``.

    NCE fits the constant (the log normaliser). The contrastive losses (``E(x⁺) - E(x⁻)``
    averaged over batches of equal size) and score matching (``∇ₓE``) get a zero gradient for
    it, so it stays exactly 0 and changes no energy there.
    """

    mean: jax.Array
    factor: jax.Array
    constant: jax.Array
    jitter: float = eqx.field(static=True)

    @classmethod
    def start(cls, jitter):
        """Where every fit starts: ``mean = 0``, ``L = I``, ``constant = 0``."""
        return cls(jnp.zeros(2), jnp.eye(2), jnp.zeros(()), jitter)

    def precision(self):
        lower = jnp.tril(self.factor)
        return lower @ lower.T + self.jitter * jnp.eye(lower.shape[0])

    def __call__(self, x):
        residual = x - self.mean
        return 0.5 * residual @ self.precision() @ residual + self.constant


def model_moments(energy, base_scale):
    """Mean and covariance of the tilted model ``exp(-E) ρ`` (float64)."""
    precision = np.asarray(energy.precision(), np.float64)
    cov = np.linalg.inv(precision + np.eye(2) / base_scale**2)
    return cov @ precision @ np.asarray(energy.mean, np.float64), cov


NO_WALKERS = jnp.zeros((0, 2))  # what `init` gets when `num_walkers == 0`

# ---------------------------------------------------------------- the score-matching and NCE fits

JITTER = 1e-6  # keeps P = L Lᵀ + jitter I positive definite; part of P, so exact too
ENERGY = QuadraticEnergy.start(JITTER)  # what `fit` trains
PARAMS, _ = eqx.partition(ENERGY, eqx.is_array)
SEED = 0
# Recovery runs: fresh batches of 512 draws, Adam with cosine decay from 5e-2 to 5e-4.
NUM_STEPS, BATCH_SIZE, LEARNING_RATE = 1000, 512, 5e-2


@functools.cache
def _compiled_fit(settings, base_scale, num_steps, batch_size, learning_rate, broken):
    """The jitted ``run(params, sign)`` of :func:`fit`; the sign is traced, so a run and its
    negated-loss control share one compilation."""
    objective = settings.build(ObjectiveContext(ENERGY, 2, base_scale, batch_size))
    if broken is not None:
        objective = broken(objective)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps, 0.01))
    key_objective, key_steps = jax.random.split(jax.random.key(SEED))

    @jax.jit
    def run(params, sign):
        def loss(params, positives, batch):
            return jax.tree.map(lambda v: sign * v, objective.loss(params, positives, batch))

        def step(carry, key):
            params, opt_state, state = carry
            positives = gaussian_draws(key, batch_size)
            state, batch, _ = objective.prepare(state, params, positives)
            grads, _ = jax.grad(loss, has_aux=True)(params, positives, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, state), None

        init = (params, optimizer.init(params), objective.init(key_objective, NO_WALKERS, params))
        (params, _, state), _ = jax.lax.scan(step, init, jax.random.split(key_steps, num_steps))
        return params, state

    return run


def fit(
    settings,
    *,
    base_scale,
    num_steps=NUM_STEPS,
    batch_size=BATCH_SIZE,
    learning_rate=LEARNING_RATE,
    broken=None,
    sign=1.0,
):
    """Train :data:`ENERGY` with an objective on fresh draws of N(μ, Σ); one jitted scan.

    Args:
        settings: The objective's settings.
        base_scale: σ_ρ of the tilt.
        num_steps: Adam steps.
        batch_size: Data points per step.
        learning_rate: Initial learning rate (cosine decay to 1% of it).
        broken: ``objective -> objective``, a deliberate error (a control).
        sign: -1 negates the loss (the negated-loss control).

    Returns:
        The trained energy and the objective's final state.
    """
    run = _compiled_fit(settings, base_scale, num_steps, batch_size, learning_rate, broken)
    params, static = eqx.partition(ENERGY, eqx.is_array)
    params, state = run(params, jnp.asarray(sign, jnp.float32))
    return eqx.combine(params, static), state


def moment_errors(energy, base_scale, target_cov, target_mean=GAUSS_MEAN):
    """The checked errors of a model: mean (absolute) and covariance (relative)."""
    mean, cov = model_moments(energy, base_scale)
    return {
        "mean": float(np.max(np.abs(mean - target_mean))),
        "cov": float(np.max(np.abs(cov - target_cov)) / np.max(np.abs(target_cov))),
    }


def check_errors(errors, tolerances):
    """Whether every error is finite and within its tolerance (NaN fails)."""
    return all(bool(errors[name] <= tolerance) for name, tolerance in tolerances.items())


# ---------------------------------------------------------------- contracts


def assert_same_key_same_result(
    objective, positives, *, params=PARAMS, walkers=NO_WALKERS, seeds=(7, 8)
):
    """``init`` + ``prepare`` (jitted) repeat exactly for a key and give another batch for
    another key; the objective keeps the walkers it is given, and is not persistent.

    Returns:
        ``(initial state, prepare's output)`` for ``seeds[0]``, then the same for ``seeds[1]``.
    """
    prepare = jax.jit(objective.prepare)

    def prepared(seed):
        state = objective.init(jax.random.key(seed), walkers, params)
        return state, prepare(state, params, positives)

    first, other = prepared(seeds[0]), prepared(seeds[1])
    assert leaves_equal(first, prepared(seeds[0]))
    assert not leaves_equal(first[1][1], other[1][1])
    assert objective.num_walkers == walkers.shape[0] and not objective.persistent
    return first, other


# The trainer's smallest run: two 1-step epochs (a checkpoint after each, the default).
TRAINER_SETTINGS = dict(
    num_epochs=2,
    steps_per_epoch=1,
    batch_size=16,
    energy_width=8,
    energy_depth=1,
    num_data=256,
    grid_points=20,
)


def assert_same_run(full, resumed):
    """The same final state (every leaf, exactly) and history (but for wall-clock times; a
    NaN metric, such as a flowless sampler's ``flow_loss``, equals NaN)."""
    assert leaves_equal(full.state, resumed.state)

    def without_times(history):
        return [
            {k: "NaN" if v != v else v for k, v in entry.items() if k != "time_s"}
            for entry in history
        ]

    assert without_times(resumed.history) == without_times(full.history)


def assert_trainer_resumes_exactly(settings, tmp_path):
    """An objective's 2-step run through the Trainer (:data:`TRAINER_SETTINGS`): finite losses,
    and a run stopped after the first epoch then resumed from its checkpoint by a fresh Trainer
    ends exactly as the uninterrupted one. Returns the uninterrupted run."""
    config = TrainConfig(objective=settings, **TRAINER_SETTINGS)
    trainer = Trainer("two-modes-2to1", config)
    full = trainer.fit(out_dir=tmp_path / "full", progress_bar=False)
    trainer.fit(out_dir=tmp_path / "split", progress_bar=False, num_epochs=1)
    resumed = Trainer("two-modes-2to1", config).fit(
        out_dir=tmp_path / "split", resume=True, progress_bar=False
    )
    assert int(full.state.step) == 2
    assert all(np.isfinite(entry["loss"]) for entry in full.history)
    assert_same_run(full, resumed)
    return full
