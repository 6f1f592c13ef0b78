"""``pcd``: contrastive maximum likelihood with persistent negatives ([A] Alg. 1).

Each step moves persistent walkers with a negative sampler (:mod:`~numpyro_ebm.training.
negatives`: ``flowmc``, [A]'s, or the baselines ``ula``, ``mala``, ``nt``) on the *current*
energy; the walkers are the negatives of :func:`~numpyro_ebm.training.objectives.ebm_loss`.
With ``sampler="ula"`` this is persistent contrastive divergence [B]; with ``"flowmc"`` it is
flow-assisted training [A].

References:
    [A] L. Grenioux, É. Moulines, M. Gabrié, *Balanced Training of Energy-Based Models with
    Adaptive Flow Sampling*, arXiv:2306.00684 (2023).
    [B] T. Tieleman, *Training Restricted Boltzmann Machines using Approximations to the
    Likelihood Gradient*, ICML (2008).
"""

from __future__ import annotations

import dataclasses
from typing import Any, override

from numpyro_ebm._checks import positive_float, positive_int
from numpyro_ebm.training.negatives import (
    NEGATIVE_SAMPLERS,
    ULA_STEP_SIZE,
    make_negative_sampler,
)
from numpyro_ebm.training.objectives.base import (
    Objective,
    ObjectiveContext,
    ObjectiveSettings,
    check_non_negative,
    contrastive_loss_fn,
)

__all__ = ["PCD"]


#: Per sampler: ``(builder argument, setting)`` for each setting of :class:`PCD` it reads.
_SAMPLER_SETTINGS = {
    "flowmc": (
        ("global_move", "global_move"),
        ("num_rounds", "num_rounds"),
        ("num_particles", "num_particles"),
        ("num_local_steps", "num_local_steps"),
        ("step_size", "step_size"),
        ("flow_learning_rate", "flow_learning_rate"),
        ("fit_batch_size", "fit_batch_size"),
    ),
    "mala": (
        ("num_rounds", "num_rounds"),
        ("num_local_steps", "num_local_steps"),
        ("step_size", "step_size"),
    ),
    "ula": (("num_steps", "num_local_steps"), ("step_size", "ula_step_size")),
    "nt": (
        ("num_steps", "num_local_steps"),
        ("step_size", "step_size"),
        ("flow_learning_rate", "flow_learning_rate"),
        ("fit_batch_size", "fit_batch_size"),
    ),
}
_ANY_SAMPLER_SETTINGS = {name for pairs in _SAMPLER_SETTINGS.values() for _, name in pairs}


@dataclasses.dataclass(frozen=True)
class PCD(ObjectiveSettings):
    """Settings of ``pcd``, persistent contrastive maximum likelihood ([A] Alg. 1, [B]).

    Attributes:
        sampler: Negative sampler: ``"flowmc"`` ([A]), ``"ula"``, ``"mala"`` or ``"nt"``.
        num_walkers: Persistent walkers, all used as negatives each step; [A] uses 1024-8192.
        num_rounds: ``flowmc`` / ``mala`` kernel rounds per EBM step.
        num_local_steps: MALA steps per round (``flowmc``, ``mala``), ULA steps per EBM step
            (``ula``), latent MALA steps per EBM step (``nt``).
        num_particles: i-SIR particles ``N`` ([A]: 32-128).
        global_move: ``"isir"`` ([A]) or ``"imh"`` for ``flowmc``.
        step_size: Initial MALA step size (``flowmc``, ``mala``, ``nt``; adapted).
        ula_step_size: ULA step ``η``; [A] uses ``(0.125)²/2``.
        flow_learning_rate: Adam learning rate of the flow (``flowmc`` and ``nt``).
        fit_batch_size: Negatives per flow gradient step.
        l2_penalty: Weight of ``mean E(x⁺)² + mean E(x⁻)²`` in the loss.

    Example:
        >>> PCD(sampler="ula", num_walkers=64).to_dict()["name"]
        'pcd'
    """

    name = "pcd"

    sampler: str = "flowmc"
    num_walkers: int = 512
    num_rounds: int = 1
    num_local_steps: int = 5
    num_particles: int = 32
    global_move: str = "isir"
    step_size: float = 0.1
    ula_step_size: float = ULA_STEP_SIZE
    flow_learning_rate: float = 1e-3
    fit_batch_size: int = 256
    l2_penalty: float = 0.0

    @override
    def check(self) -> None:
        if self.sampler not in NEGATIVE_SAMPLERS:
            raise ValueError(f"expected `sampler` in {NEGATIVE_SAMPLERS}, got {self.sampler!r}")
        if self.global_move not in ("isir", "imh"):
            raise ValueError(f"expected `global_move` 'isir' or 'imh', got {self.global_move!r}")
        for name in ("num_rounds", "num_local_steps", "fit_batch_size"):
            positive_int(name, getattr(self, name), 1)
        positive_int("num_walkers", self.num_walkers, 2)
        positive_int("num_particles", self.num_particles, 2)
        for name in ("step_size", "ula_step_size", "flow_learning_rate"):
            positive_float(name, getattr(self, name))
        check_non_negative("l2_penalty", self.l2_penalty)

    def sampler_options(self) -> dict:
        """Keyword arguments of the chosen negative sampler's builder."""
        return {option: getattr(self, name) for option, name in _SAMPLER_SETTINGS[self.sampler]}

    @override
    def unused_settings(self, names: Any) -> list[str]:
        """Those of ``names`` that only other samplers read (``num_particles`` for ``ula``).

        Example:
            >>> PCD(sampler="ula").unused_settings(["num_particles", "ula_step_size", "l2_penalty"])
            ['num_particles']
        """
        used = {name for _, name in _SAMPLER_SETTINGS[self.sampler]}
        return [name for name in names if name in _ANY_SAMPLER_SETTINGS and name not in used]

    def build(self, context: ObjectiveContext) -> Objective:
        """The ``pcd`` objective: the sampler's walkers are the negatives.

        Args:
            context: The energy, dimension, tilt and batch size.

        Returns:
            The objective.
        """
        sampler = make_negative_sampler(
            self.sampler,
            context.energy,
            context.dim,
            context.base_scale,
            **self.sampler_options(),
        )
        _, energy_static = context.energy_partition()

        def prepare(state, energy_params, positives):
            state, info = sampler.step(state, energy_params)
            return state, sampler.positions(state), info.metrics()

        return Objective(
            name=self.name,
            num_walkers=self.num_walkers,
            init=sampler.init,
            prepare=prepare,
            loss=contrastive_loss_fn(energy_static, self.l2_penalty),
            positions=sampler.positions,
            get_flow=sampler.get_flow,
            persistent=True,
        )
