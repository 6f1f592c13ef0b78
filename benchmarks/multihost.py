"""Several processes, one program: training and FlowMCKernel across ``jax.distributed`` hosts.

Launches ``--num-processes`` copies of this script on this machine, each with
``--devices-per-process`` fake CPU devices, joined by ``jax.distributed.initialize`` through a
coordinator on ``localhost`` (CPU collectives through gloo). Every process runs the same user
code as on one device: a short training run into one shared run directory (only process 0
writes it) and a short ``FlowMCKernel`` run whose walkers are split over every process's
devices. The launcher then checks that the run directory was written once and resumes it in
a single process with another device count.

On a cluster the same code runs unchanged: start one process per host (or per GPU) with the
scheduler, e.g. ``srun --ntasks=2 python train.py``, and call ``jax.distributed.initialize()``
without arguments; it reads the coordinator, the number of processes and each one's index
from SLURM's environment.

Run::

    .venv/bin/python benchmarks/multihost.py            # 2 processes x 2 devices
    .venv/bin/python benchmarks/multihost.py --num-processes 2 --devices-per-process 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A run of a few seconds: ULA negatives compile in seconds on CPU.
SETTINGS = dict(
    num_epochs=2,
    steps_per_epoch=4,
    batch_size=32,
    energy_width=8,
    energy_depth=1,
    num_data=256,
    grid_points=10,
    num_walkers=32,
    sampler="ula",
)


def worker(args: argparse.Namespace) -> dict:
    """One process: join the others, train, sample; returns what it saw."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC

    from numpyro_ebm import FlowMCKernel
    from numpyro_ebm.training import TrainConfig, Trainer
    from numpyro_ebm.training.mesh import data_mesh, gather_to_host, put_on_mesh, split_leading_axis

    start = time.perf_counter()
    # The user code of a single-device run: the default mesh takes every process's devices.
    trainer = Trainer("two-modes-2to1", TrainConfig().with_settings(**SETTINGS))
    result = trainer.fit(out_dir=args.out, progress_bar=False)
    walkers = trainer.objective.positions(result.state.objective_state)
    train_s = time.perf_counter() - start

    def model():
        numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0).to_event(1))

    mesh = data_mesh(len(jax.devices()))
    num_chains = 8 * mesh.size
    init = {"x": jnp.zeros((num_chains, 2)) + jnp.arange(num_chains)[:, None] / num_chains}
    mcmc = MCMC(
        FlowMCKernel(model, num_particles=4, num_local_steps=1, fit_batch_size=num_chains),
        num_warmup=10,
        num_samples=10,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), init_params=put_on_mesh(init, split_leading_axis(mesh)))
    draws = mcmc.get_samples(group_by_chain=True)["x"]
    return {
        "process": jax.process_index(),
        "global_devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()),
        "num_devices": trainer.settings()["num_devices"],
        "walker_devices": len(walkers.sharding.device_set),
        "steps": int(gather_to_host(result.state.step)),
        "train_s": round(train_s, 1),
        "kernel_draws_shape": list(draws.shape),
        "kernel_draws_devices": len(draws.sharding.device_set),
        "kernel_mean": gather_to_host(draws).mean(axis=(0, 1)).round(2).tolist(),
    }


def launch(args: argparse.Namespace) -> dict:
    """Start the processes, wait for them, check the run directory, resume it on one host."""
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    out = Path(args.out or tempfile.mkdtemp(prefix="multihost_"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(args.devices_per_process))
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--worker", "--out", str(out), "--port", str(port)),
                *("--num-processes", str(args.num_processes), "--process-id", str(index)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for index in range(args.num_processes)
    ]
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=args.timeout)
        if process.returncode != 0:
            raise RuntimeError(f"a process failed ({process.returncode}):\n{stderr[-4000:]}")
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    wall_s = time.perf_counter() - start
    checkpoints = sorted(path.name for path in (out / "checkpoints").iterdir())
    resumed = subprocess.run(
        [sys.executable, __file__, "--resume", "--out", str(out)],
        capture_output=True,
        text=True,
        env=dict(env, JAX_NUM_CPU_DEVICES="2"),
        timeout=args.timeout,
        check=True,
    )
    return {
        "processes": reports,
        "wall_s": round(wall_s, 1),
        "checkpoint_files": checkpoints,
        "resumed_on_one_process": json.loads(resumed.stdout.strip().splitlines()[-1]),
    }


def resume(args: argparse.Namespace) -> dict:
    """One process with its own devices continues the multi-process run for one epoch."""
    from numpyro_ebm.training import TrainConfig, Trainer

    trainer = Trainer("two-modes-2to1", TrainConfig().with_settings(**SETTINGS))
    result = trainer.fit(out_dir=args.out, resume=True, progress_bar=False, num_epochs=3)
    return {
        "num_devices": trainer.settings()["num_devices"],
        "epochs": [entry["epoch"] for entry in result.history],
        "steps": int(result.state.step),
    }


def main() -> None:
    """Parse the command line and run the launcher, a worker or the resumption."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=2)
    parser.add_argument("--out", default=None, help="run directory (a temporary one by default)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        report = worker(args)
    elif args.resume:
        report = resume(args)
    else:
        report = launch(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
