"""Data-parallel training on a device mesh: how many devices, and where each array lives.

The trainer splits its persistent walkers, each data batch and each flow-fitting batch over
the devices of a :class:`jax.sharding.Mesh` (SPMD data parallelism: ``jax.jit`` with
shardings, XLA inserts the collectives). Every device holds ``1 / n`` of the walkers and of each
batch and a full copy of the energy's parameters and optimizer state; the loss gradient is the
sum of the devices' shares. One device is a mesh of size one, so one program serves one device,
several devices and several hosts: after ``jax.distributed.initialize()``, ``jax.devices()``
lists every process's devices and the same code runs on all of them.

Random draws do not depend on the layout (JAX's partitionable threefry), so a run on ``n``
devices draws the numbers of a one-device run; only the order of floating-point sums differs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from numpyro_ebm._checks import is_key_array, positive_int
from numpyro_ebm._init_params import auto_axes, check_no_explicit_mesh_context

__all__ = [
    "DATA_AXIS",
    "data_mesh",
    "gather_to_host",
    "is_main_process",
    "MeshProgram",
    "num_devices_for",
    "put_on_mesh",
    "replicated",
    "split_leading_axis",
    "split_sizes",
    "state_shardings",
    "training_mesh",
]

#: Name of the axis of the meshes the trainer builds.
DATA_AXIS = "data"


def num_devices_for(requested: int | None, sizes: Mapping[str, int], available: int) -> int:
    """The number of devices that split every size in ``sizes`` evenly.

    Args:
        requested: Devices asked for; ``None`` takes the largest number, at most
            ``available``, that divides every size (so the default never fails).
        sizes: What is split over the devices, by setting name (walkers, batch sizes).
        available: Devices there are.

    Returns:
        The number of devices.

    Raises:
        ValueError: If ``requested`` is not in ``[1, available]`` or does not divide a size.

    Example:
        >>> num_devices_for(None, {"num_walkers": 6, "batch_size": 4}, available=4)
        2
        >>> num_devices_for(4, {"num_walkers": 6}, available=4)
        Traceback (most recent call last):
        ...
        ValueError: expected num_walkers = 6 to be a multiple of the 4 devices it is split over ...
    """
    if requested is None:
        return max(n for n in range(1, available + 1) if all(s % n == 0 for s in sizes.values()))
    positive_int("devices", requested, 1)
    if requested > available:
        raise ValueError(
            f"expected `devices` at most the {available} devices there are, got {requested}"
        )
    for name, size in sizes.items():
        if size % requested:
            raise ValueError(
                f"expected {name} = {size} to be a multiple of the {requested} devices it is "
                f"split over (change {name}, or the number of devices)"
            )
    return requested


def split_sizes(config: Any, num_walkers: int) -> dict[str, int]:
    """What a run splits over its devices, by setting name: walkers and batch sizes.

    Args:
        config: The run's :class:`~numpyro_ebm.training.TrainConfig`.
        num_walkers: The objective's walkers (0: it keeps none).

    Returns:
        ``batch_size``, and ``num_walkers`` and ``fit_batch_size`` where the objective has them.

    Example:
        >>> from numpyro_ebm.training import TrainConfig
        >>> split_sizes(TrainConfig(batch_size=64), num_walkers=512)
        {'batch_size': 64, 'num_walkers': 512, 'fit_batch_size': 256}
    """
    sizes = {"batch_size": config.batch_size}
    if num_walkers:
        sizes["num_walkers"] = num_walkers
    fit_batch_size = getattr(config.objective, "fit_batch_size", None)
    if fit_batch_size is not None and num_walkers:
        sizes["fit_batch_size"] = fit_batch_size
    return sizes


def data_mesh(num_devices: int) -> Mesh:
    """A one-axis mesh (:data:`DATA_AXIS`, ``AxisType.Auto``) of the first ``num_devices``.

    Example:
        >>> data_mesh(1).shape
        OrderedDict({'data': 1})
    """
    devices = jax.devices()[:num_devices]
    return jax.make_mesh((num_devices,), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def training_mesh(mesh: Mesh | None, devices: int | None, sizes: Mapping[str, int]) -> Mesh:
    """The trainer's mesh: the user's (with automatic axes), or ``devices`` of this machine's.

    Args:
        mesh: A mesh of any shape and axis types; all its axes together split the walkers.
        devices: Devices when ``mesh`` is ``None`` (see :func:`num_devices_for`).
        sizes: The sizes split over the devices, by setting name.

    Returns:
        A mesh whose axes are all ``AxisType.Auto`` (explicit axes would make every
        per-walker index of the samplers a sharding error).

    Raises:
        ValueError: If a size is not a multiple of the mesh's devices, or the trainer is made
            inside ``with jax.set_mesh(...)`` of a mesh with explicit axes.

    Example:
        >>> import jax
        >>> explicit = jax.make_mesh((1,), ("walkers",), axis_types=(AxisType.Explicit,))
        >>> training_mesh(explicit, None, {"num_walkers": 8}).axis_types == (AxisType.Auto,)
        True
        >>> training_mesh(None, 1, {"num_walkers": 8}).axis_names
        ('data',)
    """
    check_no_explicit_mesh_context("the Trainer")
    if mesh is None:
        return data_mesh(num_devices_for(devices, sizes, len(jax.devices())))
    num_devices_for(mesh.size, sizes, mesh.size)
    return auto_axes(mesh)


def split_leading_axis(mesh: Mesh) -> NamedSharding:
    """Arrays split along their first axis over all the mesh's devices (walkers, batches).

    Example:
        >>> split_leading_axis(data_mesh(1)).spec
        P('data',)
    """
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (parameters, optimizer state, data).

    Example:
        >>> replicated(data_mesh(1)).is_fully_replicated
        True
    """
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """The layout each array of a state keeps: split as XLA split it over ``mesh``, or copied.

    The walkers are placed split before the objective is built from them, so what derives from
    them (positions, energies, the flow's buffer) comes out split too; everything else
    (parameters, optimizer states, keys of the whole ensemble) is replicated. Fixing these
    layouts as the training program's input and output layouts makes a resumed run's arrays
    sit exactly as an uninterrupted run's.

    Args:
        tree: A state whose arrays live on ``mesh``'s devices.
        mesh: The mesh.

    Returns:
        A tree of :class:`~jax.sharding.NamedSharding` of the same structure.

    Example:
        >>> import jax.numpy as jnp
        >>> mesh = data_mesh(1)
        >>> state = {"walkers": put_on_mesh(jnp.zeros((4, 2)), split_leading_axis(mesh)),
        ...          "weights": jnp.ones(3)}
        >>> {name: s.spec for name, s in state_shardings(state, mesh).items()}
        {'walkers': P(), 'weights': P()}
    """
    devices = set(mesh.devices.flat)

    def layout(leaf):
        sharding = getattr(leaf, "sharding", None)
        if (
            isinstance(sharding, NamedSharding)
            and sharding.device_set == devices
            and not sharding.is_fully_replicated
        ):
            return NamedSharding(mesh, sharding.spec)
        return replicated(mesh)

    return jax.tree.map(layout, tree)


def _place(leaf: Any, sharding: NamedSharding) -> Any:
    if not isinstance(leaf, jax.Array):
        return leaf
    if is_key_array(leaf):
        data = _place(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    if leaf.sharding == sharding:
        return leaf
    if sharding.is_fully_addressable or not leaf.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    # Several processes: each holds the same host value (same seed or same checkpoint) and
    # hands over the shards of its own devices.
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_on_mesh(tree: Any, shardings: Any) -> Any:
    """Place each array of ``tree`` with its sharding, across processes too.

    Args:
        tree: Arrays (PRNG keys included) with the same value in every process.
        shardings: One sharding for all, or one per array (a tree of the same structure).

    Returns:
        The arrays, laid out as asked.

    Example:
        >>> import jax.numpy as jnp
        >>> mesh = data_mesh(1)
        >>> x = put_on_mesh(jnp.zeros((4, 3)), split_leading_axis(mesh))
        >>> x.sharding.spec
        P('data',)
    """
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda leaf: _place(leaf, shardings), tree)
    return jax.tree.map(_place, tree, shardings)


def gather_to_host(tree: Any) -> Any:
    """Every array of ``tree`` as a NumPy array of its whole value (every process must call).

    Args:
        tree: Arrays, possibly split over several processes' devices (no PRNG keys: store
            their ``jax.random.key_data``).

    Returns:
        The same tree with NumPy arrays.

    Example:
        >>> import jax.numpy as jnp
        >>> gather_to_host({"x": jnp.arange(3)})
        {'x': array([0, 1, 2], dtype=int32)}
    """

    def host(leaf):
        if not isinstance(leaf, jax.Array):
            return leaf
        if leaf.is_fully_addressable or leaf.is_fully_replicated:
            return np.asarray(leaf)
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(host, tree)


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0; always true on one host)."""
    return jax.process_index() == 0


def _same_tree(a: Any, b: Any) -> bool:
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    return tree_a == tree_b and leaves_a == leaves_b


class MeshProgram:
    """A training program compiled for a mesh, whose state keeps one layout from call to call.

    The layout is fixed once from the initial state (:meth:`fix_layout`) and is the program's
    output layout, so the state after a call sits as before it; a state from elsewhere (a
    checkpoint, another device count) is first put in that layout. A resumed run therefore
    runs the very program of an uninterrupted one on the same arrays: bit-identical.

    Args:
        program: ``program(state, data, *args) -> (state, outputs)``, jittable.
        mesh: The mesh.
        data: The training data, copied on every device.

    Example:
        >>> import jax.numpy as jnp
        >>> program = MeshProgram(lambda s, d, k: (s + k * d.sum(), s), data_mesh(1),
        ...                       jnp.ones(2))
        >>> state = program.fix_layout(jnp.zeros(4))
        >>> program(state, 1.0)[0]
        Array([2., 2., 2., 2.], dtype=float32)
    """

    def __init__(self, program: Callable, mesh: Mesh, data: Any):
        self.mesh = mesh
        self.layout = None
        self._program = program
        self._compiled = None
        self._data = put_on_mesh(data, replicated(mesh))

    def fix_layout(self, state: Any) -> Any:
        """Take ``state``'s layout as the program's (see :func:`state_shardings`).

        Returns:
            The state in that layout.
        """
        layout = state_shardings(state, self.mesh)
        if not _same_tree(layout, self.layout):  # else keep the compiled program
            self.layout, self._compiled = layout, None
        return put_on_mesh(state, self.layout)

    def __call__(self, state: Any, *args: Any) -> tuple[Any, Any]:
        """Run the program on ``state`` (put in the fixed layout first) and the data.

        Raises:
            RuntimeError: If no layout was fixed yet.
        """
        if self.layout is None:
            raise RuntimeError("fix_layout(initial_state) must be called before the program")
        if self._compiled is None:
            out_shardings = (self.layout, replicated(self.mesh))
            self._compiled = jax.jit(self._program, out_shardings=out_shardings)
        return self._compiled(put_on_mesh(state, self.layout), self._data, *args)
