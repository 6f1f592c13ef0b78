"""Flow baselines of the real-data benchmark: spline flows fitted on the same split as the EBM.

Issue 8's goal compares an EBM's held-out log-likelihood with the best of two flowjax flows
fitted to the same training split within a wall-time budget: a rational-quadratic-spline
coupling flow (Dinh et al. 2017, RealNVP; Durkan et al. 2019, "Neural spline flows") and a
masked autoregressive spline flow (Papamakarios et al. 2017, MAF, with spline transformers).
Both act on the standardised (and, for integer data, dequantised) coordinates of
:class:`numpyro_ebm.preprocessing.Preprocessing`, are fitted by maximum likelihood with Adam
on mini-batches, keep the parameters of the best validation loss, and stop early when the
validation loss has not improved for ``patience`` epochs or when the budget runs out.

Run::

    PYTHONPATH=. .venv/bin/python benchmarks/_flow_baselines.py             # all datasets
    PYTHONPATH=. .venv/bin/python benchmarks/_flow_baselines.py --datasets wine --max-seconds 10
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import AbstractDistribution, StandardNormal
from flowjax.flows import coupling_flow, masked_autoregressive_flow

from numpyro_ebm._checks import positive_float, positive_int, typed_key
from numpyro_ebm.flows import flow_optimizer, merge_flow, split_flow
from numpyro_ebm.preprocessing import Preprocessing

#: The flows compared, by name: the flowjax constructor of each.
FLOW_KINDS = {"coupling-spline": coupling_flow, "maf-spline": masked_autoregressive_flow}
#: The real datasets of issue 8.
DATASETS = ("digits", "breast-cancer", "wine")


class FlowFit(NamedTuple):
    """A fitted flow baseline.

    Attributes:
        flow: The flow with the parameters of the lowest validation loss.
        wall_seconds: Wall time of the whole fit (building, compiling, training, validating).
        num_epochs: Epochs run.
        best_validation_nll: The lowest validation loss (mean negative log-likelihood, nats).
        stopped_by: ``"patience"``, ``"budget"`` or ``"max_epochs"``.
    """

    flow: AbstractDistribution
    wall_seconds: float
    num_epochs: int
    best_validation_nll: float
    stopped_by: str


class HeldoutLogLikelihood(NamedTuple):
    """Mean held-out log-likelihood per example, in nats, with its standard error.

    Attributes:
        standardised: Mean log density of the model's coordinates ``z``.
        raw: Mean log density in raw units (``standardised + log_det_jacobian``; for integer
            data, of the dequantised points, a lower bound on the integers' log-probability).
        stderr: Standard error of either mean (they differ by a constant).
    """

    standardised: float
    raw: float
    stderr: float


def load_split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw train, validation and test splits (80/10/10) of a scikit-learn dataset.

    TODO: replace by ``numpyro_ebm.get_dataset(name)``'s splits once they are merged; this
    stand-in splits the same way (``np.random.default_rng(0).permutation``).

    Args:
        name: ``"digits"``, ``"breast-cancer"`` or ``"wine"``.

    Returns:
        ``(train, validation, test)``, each ``(n, d)`` float64.

    Raises:
        ValueError: If ``name`` is not one of :data:`DATASETS`.
    """
    from sklearn import datasets  # a benchmark dependency only

    loaders = {
        "digits": datasets.load_digits,
        "breast-cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }
    if name not in loaders:
        raise ValueError(f"expected a dataset in {DATASETS}, got {name!r}")
    data = np.asarray(loaders[name]().data, dtype=np.float64)
    order = np.random.default_rng(0).permutation(data.shape[0])
    num_train, num_validation = int(0.8 * len(order)), int(0.1 * len(order))
    train, validation, test = np.split(data[order], [num_train, num_train + num_validation])
    return train, validation, test


def build_flow(
    kind: str,
    dim: int,
    *,
    key: jax.Array,
    flow_layers: int = 4,
    nn_width: int = 64,
    knots: int = 8,
    interval: float = 5.0,
) -> AbstractDistribution:
    """A spline flow on ``dim`` standardised coordinates with a standard Normal base.

    Args:
        kind: ``"coupling-spline"`` or ``"maf-spline"``.
        dim: Dimension of a point.
        key: PRNG key of the conditioner weights.
        flow_layers: Number of flow layers.
        nn_width: Width of each conditioner's hidden layer; a masked autoregressive layer
            needs about ``dim`` hidden units or more to connect every input to every output.
        knots: Spline knots per coordinate.
        interval: Splines act on ``[-interval, interval]`` and are the identity outside; 5
            standard deviations covers all but the outliers of standardised data.

    Returns:
        The flowjax distribution.
    """
    if kind not in FLOW_KINDS:
        raise ValueError(f"expected `kind` in {tuple(FLOW_KINDS)}, got {kind!r}")
    return FLOW_KINDS[kind](
        typed_key(key),
        base_dist=StandardNormal((positive_int("dim", dim),)),
        transformer=RationalQuadraticSpline(knots=knots, interval=interval),
        flow_layers=flow_layers,
        nn_width=nn_width,
    )


def _mean_nll(params: Any, static: Any, z: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of ``z`` under the flow ``(params, static)``."""
    return -jnp.mean(merge_flow(params, static).log_prob(z))


def _epoch_program(static: Any, optimizer: Any, batch_size: int, num_steps: int):
    """A jitted epoch: ``num_steps`` Adam steps on batches of shuffled training points.

    The points are drawn without replacement pass by pass; the batches of an epoch may span
    several passes (small datasets) and the tail of the last pass is unused.
    """
    loss_and_grad = jax.value_and_grad(_mean_nll)

    @eqx.filter_jit
    def epoch(params, opt_state, train_z, key):
        num_points = train_z.shape[0]
        num_passes = -(-num_steps * batch_size // num_points)  # ceiling division
        orders = jax.vmap(lambda k: jax.random.permutation(k, num_points))(
            jax.random.split(key, num_passes)
        )
        rows = orders.reshape(-1)[: num_steps * batch_size]
        batches = train_z[rows].reshape(num_steps, batch_size, -1)

        def one_step(carry, batch):
            params, opt_state = carry
            loss, grads = loss_and_grad(params, static, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (eqx.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), batches)
        return params, opt_state, jnp.mean(losses)

    return epoch


def fit_flow_baseline(
    kind: str,
    train_z: np.ndarray,
    validation_z: np.ndarray,
    *,
    rng_key: jax.Array,
    max_seconds: float,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    min_steps_per_epoch: int = 20,
    max_epochs: int = 2000,
    patience: int = 10,
    **flow_options: Any,
) -> FlowFit:
    """Fit a spline flow by maximum likelihood with early stopping on the validation split.

    The budget is checked between epochs: an epoch starts only if the time so far plus the
    last epoch's time fits in ``max_seconds``, so the fit ends within about one epoch of it.
    The first epoch's time includes compilation.

    Args:
        kind: ``"coupling-spline"`` or ``"maf-spline"``.
        train_z: Standardised training points ``(n, d)``.
        validation_z: Standardised validation points ``(m, d)``.
        rng_key: PRNG key (typed or raw) of the initial weights and the batch order.
        max_seconds: Wall-time budget of the whole fit.
        learning_rate: Adam step size (gradients clipped at global norm 10, NaN steps skipped).
        batch_size: Points per step (the whole training split if it has fewer).
        min_steps_per_epoch: Fewest steps between validations: an epoch is one pass over the
            training split or this many steps, whichever is more, so that patience on a
            small split (wine: 142 points, one batch) is not a handful of steps.
        max_epochs: Most epochs.
        patience: Epochs without a lower validation loss before stopping.
        **flow_options: Passed to :func:`build_flow`.

    Returns:
        The fit, with the parameters of the lowest validation loss.
    """
    start = time.perf_counter()
    max_seconds = positive_float("max_seconds", max_seconds)
    train_z = jnp.asarray(train_z, dtype=jnp.float32)
    validation_z = jnp.asarray(validation_z, dtype=jnp.float32)
    init_key, epoch_key = jax.random.split(typed_key(rng_key))
    flow = build_flow(kind, train_z.shape[1], key=init_key, **flow_options)
    params, static = split_flow(flow)
    optimizer = flow_optimizer(learning_rate)
    opt_state = optimizer.init(params)
    batch_size = min(positive_int("batch_size", batch_size), train_z.shape[0])
    num_steps = max(train_z.shape[0] // batch_size, positive_int("min_steps", min_steps_per_epoch))
    epoch = _epoch_program(static, optimizer, batch_size, num_steps)
    validation_nll = eqx.filter_jit(_mean_nll)

    best_params, best_nll, since_best = params, math.inf, 0
    stopped_by, num_epochs, last_epoch_seconds = "max_epochs", 0, 0.0
    for key in jax.random.split(epoch_key, positive_int("max_epochs", max_epochs)):
        if time.perf_counter() - start + last_epoch_seconds > max_seconds:
            stopped_by = "budget"
            break
        epoch_start = time.perf_counter()
        params, opt_state, _ = epoch(params, opt_state, train_z, key)
        nll = float(validation_nll(params, static, validation_z))  # waits for the epoch
        num_epochs += 1
        last_epoch_seconds = time.perf_counter() - epoch_start
        if nll < best_nll:
            best_params, best_nll, since_best = params, nll, 0
        else:  # a NaN loss counts as no improvement
            since_best += 1
            if since_best >= patience:
                stopped_by = "patience"
                break
    wall_seconds = time.perf_counter() - start
    return FlowFit(merge_flow(best_params, static), wall_seconds, num_epochs, best_nll, stopped_by)


def heldout_log_likelihood_of_flow(
    flow: AbstractDistribution, test_z: np.ndarray, preprocessing: Preprocessing
) -> HeldoutLogLikelihood:
    """Mean log-likelihood per held-out example, standardised and in raw units.

    Args:
        flow: A flow over the standardised coordinates.
        test_z: Standardised (and dequantised) held-out points ``(n, d)``, ``n >= 2``.
        preprocessing: The map that made ``test_z``, for the Jacobian to raw units.

    Returns:
        The means in nats per example and their standard error (sample sd / √n).
    """
    log_probs = np.asarray(eqx.filter_jit(flow.log_prob)(jnp.asarray(test_z)), dtype=np.float64)
    if log_probs.shape[0] < 2:
        raise ValueError(f"expected at least 2 held-out points, got {log_probs.shape[0]}")
    mean = float(np.mean(log_probs))
    stderr = float(np.std(log_probs, ddof=1) / math.sqrt(log_probs.shape[0]))
    return HeldoutLogLikelihood(mean, mean + preprocessing.log_det_jacobian, stderr)


def gaussian_heldout_log_likelihood(
    train_z: np.ndarray, test_z: np.ndarray, preprocessing: Preprocessing
) -> HeldoutLogLikelihood:
    """The same measure for a full-covariance Gaussian fitted to ``train_z``: a floor to beat.

    A ridge of 1e-6 on the covariance's diagonal keeps it invertible for collinear columns.
    """
    train_z, test_z = np.asarray(train_z, np.float64), np.asarray(test_z, np.float64)
    mean, dim = train_z.mean(axis=0), train_z.shape[1]
    cholesky = np.linalg.cholesky(np.cov(train_z.T) + 1e-6 * np.eye(dim))
    whitened = np.linalg.solve(cholesky, (test_z - mean).T)
    log_probs = (
        -0.5 * np.sum(whitened**2, axis=0)
        - np.sum(np.log(np.diag(cholesky)))
        - 0.5 * dim * math.log(2 * math.pi)
    )
    mean_log_prob = float(np.mean(log_probs))
    stderr = float(np.std(log_probs, ddof=1) / math.sqrt(log_probs.shape[0]))
    return HeldoutLogLikelihood(
        mean_log_prob, mean_log_prob + preprocessing.log_det_jacobian, stderr
    )


def run_dataset(name: str, kinds: list[str], max_seconds: float, seed: int) -> list[dict]:
    """Fit each flow kind on one dataset's split and measure its held-out log-likelihood."""
    train, validation, test = load_split(name)
    prep_key, validation_key, test_key, fit_key = jax.random.split(jax.random.key(seed), 4)
    preprocessing = Preprocessing.fit(train, rng_key=prep_key)
    train_z = preprocessing.transform(train, prep_key)  # the noise the moments were fitted on
    validation_z = preprocessing.transform(validation, validation_key)
    test_z = preprocessing.transform(test, test_key)
    gaussian = gaussian_heldout_log_likelihood(train_z, test_z, preprocessing)
    rows = [{"dataset": name, "flow": "gaussian (reference)", "fit": None, "heldout": gaussian}]
    print(format_row(rows[-1]), flush=True)
    for kind in kinds:
        fit = fit_flow_baseline(
            kind, train_z, validation_z, rng_key=fit_key, max_seconds=max_seconds
        )
        heldout = heldout_log_likelihood_of_flow(fit.flow, test_z, preprocessing)
        rows.append({"dataset": name, "flow": kind, "fit": fit, "heldout": heldout})
        print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    """One Markdown table row of :func:`run_dataset`'s result."""
    fit, heldout = row["fit"], row["heldout"]
    fit_text = (
        "– | – | –"
        if fit is None
        else (f"{fit.wall_seconds:.1f} | {fit.num_epochs} | {fit.stopped_by}")
    )
    return (
        f"| {row['dataset']} | {row['flow']} | {heldout.standardised:.2f} | {heldout.raw:.2f} "
        f"| {heldout.stderr:.2f} | {fit_text} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--kinds", nargs="+", default=list(FLOW_KINDS), choices=list(FLOW_KINDS))
    parser.add_argument("--max-seconds", type=float, default=35.0, help="budget per flow")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        "| dataset | flow | held-out LL (standardised, nats) | held-out LL (raw, nats) "
        "| stderr | wall s | epochs | stopped by |\n|---|---|---:|---:|---:|---:|---:|---|",
        flush=True,
    )
    for name in args.datasets:
        run_dataset(name, args.kinds, args.max_seconds, args.seed)


if __name__ == "__main__":
    main()
