"""Data parallelism: one mesh axis ``data``; batches split along it, parameters replicated.

Single host: the mesh spans the local devices. Several hosts: call ``initialize`` first (before
any other JAX call) in every process; each process then loads the same batches (same seed, same
order) and contributes its own slice of every batch, so the global batch is split over all
devices of all hosts. ``gather`` brings a result split over hosts back to every process.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from twin.errors import ConfigError


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """jax.distributed.initialize for multi-host runs; a no-op when all three are None.

    coordinator: "host:port" of process 0; num_processes: total processes; process_id: this
    process (0 .. num_processes - 1). On Slurm, Open MPI and Cloud TPU any of them may be left out
    when another is given (JAX detects the rest).
    """
    if coordinator is None and num_processes is None and process_id is None:
        return
    host, _, port = (coordinator or "").rpartition(":")
    if coordinator is not None and not (host and port.isdigit()):
        raise ConfigError(f"--coordinator {coordinator}: write HOST:PORT of process 0, e.g. host0:12345")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ConfigError(
            f"--process-id {process_id}: must lie in 0..{num_processes - 1} for --num-processes {num_processes}"
        )
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    except ValueError as error:  # JAX could not complete the set-up from the flags and environment
        raise ConfigError(
            f"--coordinator/--num-processes/--process-id: {str(error).splitlines()[0]}; give all three"
            " (or run under Slurm, Open MPI or Cloud TPU, which provide them)"
        ) from None


def sync(name: str) -> None:
    """Wait until every process reaches this point (a no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-d mesh named ``data`` over ``devices`` (default: all devices of all processes).

    Auto axis type: Explicit sharding (jax.make_mesh's default) breaks convolutions.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(
        np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )


def replicate(tree, mesh: jax.sharding.Mesh):
    """Every leaf of ``tree`` copied to all devices of ``mesh`` (identical in every process)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # device_put cannot place typed PRNG keys (nnx rng streams) on other hosts' devices.
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def shard_batch(tree, mesh: jax.sharding.Mesh):
    """Place the leaves of a batch (each (batch, ...), identical in every process) on ``mesh``.

    Leaves whose batch size divides by the device count are split along ``data`` (each process
    contributes its slice); the others (e.g. an epoch's last, smaller batch) are replicated.
    """
    n_devices = mesh.devices.size
    n_processes = jax.process_count()
    index = jax.process_index()

    def place(x):
        x = np.asarray(x)
        if x.shape[0] % n_devices:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        sharding = NamedSharding(mesh, PartitionSpec("data"))
        if n_processes == 1:
            return jax.device_put(x, sharding)
        rows = x.shape[0] // n_processes
        local = x[index * rows : (index + 1) * rows]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree.map(place, tree)


def gather(tree):
    """Every leaf of ``tree`` (arrays on a mesh, possibly split over hosts) as a whole numpy
    array in every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def agreed_minimum(value: int) -> int:
    """The smallest of ``value`` over all processes (e.g. a chunk size that fits every host)."""
    if jax.process_count() == 1:
        return value
    return int(np.min(multihost_utils.process_allgather(np.int32(value))))
