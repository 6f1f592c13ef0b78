"""Memory of one FlowMCKernel round: the warm-up buffer against the round's compiled scratch.

Compiles one round (``kernel.sample``, its state donated as in ``MCMC``'s loop) for each
``--buffer-sizes`` value and prints XLA's memory analysis: the buffer the flow is fitted on
(``B · W · d`` numbers), the round's temporary memory, and their ratio. Nothing runs but the
kernel's initialisation, so the figures are exact and the same on every run of one commit.
Run::

    .venv/bin/python benchmarks/round_memory.py                            # W = 8192, d = 512
    .venv/bin/python benchmarks/round_memory.py --walkers 1024 --dim 64 --dense

To measure another commit, put a checkout of it first on the path
(``git worktree add /tmp/old REV``, then ``PYTHONPATH=/tmp/old .venv/bin/python
benchmarks/round_memory.py``).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from numpyro_ebm import FlowMCKernel


def standard_normal(x: jax.Array) -> jax.Array:
    """The potential of N(0, I): the round's memory does not depend on the target."""
    return 0.5 * jnp.sum(x**2)


def round_memory(num_walkers: int, dim: int, buffer_size: int, dense: bool) -> dict:
    """Bytes of the buffer and of one compiled round's temporaries."""
    kernel = FlowMCKernel(
        potential_fn=standard_normal, buffer_size=buffer_size, dense_preconditioner=dense
    )
    keys = jax.random.split(jax.random.key(0), num_walkers)
    start = jax.random.normal(jax.random.key(1), (num_walkers, dim))
    state = kernel.init(keys, 10, start, (), {})
    one_round = jax.jit(lambda s: kernel.sample(s, (), {}), donate_argnums=0)
    analysis = one_round.lower(state).compile().memory_analysis()
    return {"buffer": state.adaptation.buffer.nbytes, "scratch": analysis.temp_size_in_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walkers", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--buffer-sizes", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--dense", action="store_true", help="dense preconditioner")
    args = parser.parse_args()
    print(f"W = {args.walkers}, d = {args.dim}, dense = {args.dense}")
    print(f"{'B':>4} {'buffer GB':>10} {'scratch GB':>11} {'scratch/buffer':>15}")
    for buffer_size in args.buffer_sizes:
        sizes = round_memory(args.walkers, args.dim, buffer_size, args.dense)
        ratio = sizes["scratch"] / sizes["buffer"]
        print(
            f"{buffer_size:>4} {sizes['buffer'] / 1e9:>10.3f} {sizes['scratch'] / 1e9:>11.3f} "
            f"{ratio:>15.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
