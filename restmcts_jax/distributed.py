"""Multi-process helpers: start-up, question shards, gathering variable-size
host data, the device mesh, and moving parameters between it and the devices
a process searches on.

One process per host (Cloud TPU VM worker, GPU node), or several on one
machine for tests (CPU collectives over loopback). Search and evaluation run
process-locally on each process's share of the questions; their results are
gathered so every process holds the same training data; training runs on a
mesh over all devices of all processes.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from restmcts_jax.training import sharding


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize`; without arguments it detects the cluster
  (Cloud TPU, SLURM, ...). CPU processes talk through gloo."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main() -> bool:
  """Process 0 writes files that every process would write identically."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process got here (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (e.g. a preemption notice that
  reached only one host), so all processes stop at the same point."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.array([flag], np.int32))
  return bool(np.any(flags))


def shard(count: int) -> slice:
  """This process's contiguous share of `count` items: concatenating the
  shards in process order gives the items in their original order."""
  p, n = jax.process_index(), jax.process_count()
  return slice(count * p // n, count * (p + 1) // n)


def allgather_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Concatenates, in process order, every process's arrays (same keys and
  dtypes; any leading size, any second size for 2-D arrays).

  Every process gets the same result, in the local dtypes; with one process
  it is `arrays`. 64-bit values travel as 32-bit ones (no jax_enable_x64).
  """
  if jax.process_count() == 1:
    return arrays
  out = {}
  for key in sorted(arrays):
    local = np.asarray(arrays[key])
    shapes = multihost_utils.process_allgather(
        np.array(local.shape + (0,) * (2 - local.ndim), np.int64))
    rows, width = shapes.max(axis=0)
    padded = np.zeros((rows,) + ((width,) if local.ndim == 2 else ()),
                      local.dtype)
    padded[tuple(slice(0, s) for s in local.shape)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    parts = [g[:s[0], :width] if local.ndim == 2 else g[:s[0]]
             for g, s in zip(gathered, shapes)]
    out[key] = np.concatenate(parts).astype(local.dtype)
  return out


def broadcast(value: int) -> int:
  """Process 0's `value` on every process."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def mesh(fsdp: int = 1, tensor: int = 1) -> jax.sharding.Mesh:
  """All devices of all processes as a `(data, fsdp, tensor)` mesh.

  Parameters are sharded over `fsdp` x `tensor` blocks of devices that each
  lie within one process, so every process holds a whole copy of them (and
  can search its own questions); `data` spans the rest.

  Raises:
    ValueError: naming `config.mesh` if a block does not fit a process.
  """
  local = jax.local_device_count()
  if fsdp < 1 or tensor < 1 or local % (fsdp * tensor):
    raise ValueError(
        f"config.mesh.fsdp={fsdp} x config.mesh.tensor={tensor} must divide "
        f"the {local} devices of each process")
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  grid = np.array(devices).reshape(-1, fsdp, tensor)
  return jax.sharding.Mesh(grid, sharding.MESH_AXES, axis_types=(
      jax.sharding.AxisType.Auto,) * len(sharding.MESH_AXES))


def check_divisible(tree, shardings) -> None:
  """ValueError naming `config.mesh.<axis>` when a mesh axis does not divide
  the dimension of a parameter it shards (e.g. `tensor` and the kv heads).

  Args:
    tree: parameters (arrays or shape structs).
    shardings: their `NamedSharding`s, a matching tree.
  """
  def check(path, x, s):
    for dim, axes in zip(x.shape, s.spec):
      axes = (axes,) if isinstance(axes, str) else axes or ()
      split = int(np.prod([s.mesh.shape[a] for a in axes]))
      if dim % split:
        settings = " x ".join(f"config.mesh.{a}={s.mesh.shape[a]}"
                              for a in axes)
        raise ValueError(
            f"{settings} does not divide dimension {dim} of "
            f"{jax.tree_util.keystr(path)} (shape {tuple(x.shape)}); "
            "choose a mesh that divides the model's heads, kv heads, MLP, "
            "vocabulary (tensor) and embedding (fsdp)")
  jax.tree_util.tree_map_with_path(check, tree, shardings)


def search_mesh(global_mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """This process's first `fsdp` x `tensor` block of `global_mesh` (the
  devices its search and evaluation run on), as a mesh with `data` = 1."""
  first = next(i for i, block in enumerate(global_mesh.devices)
               if block.flat[0].process_index == jax.process_index())
  return jax.sharding.Mesh(global_mesh.devices[first:first + 1],
                           global_mesh.axis_names,
                           axis_types=global_mesh.axis_types)


def to_global(tree, shardings):
  """Host or process-local arrays -> global arrays with `shardings` (a tree
  of shardings matching `tree`, or one for all). Every process must pass the
  same values. Arrays already laid out as asked keep their buffers."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def put(x, s):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim):
      # Same layout; `device_put` only relabels it (a one-device array's
      # `SingleDeviceSharding` becomes `s`, whose spec `to_search` reads).
      return x if x.sharding == s else jax.device_put(x, s)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])
  return jax.tree.map(put, tree, shardings)


def to_search(tree, mesh: jax.sharding.Mesh):
  """Global arrays on a `mesh(...)` -> this process's whole copy on its
  `search_mesh`: each of those devices already holds its shard, so nothing
  moves."""
  local = search_mesh(mesh)

  def put(x):
    target = NamedSharding(local, x.sharding.spec)
    shards = {s.device: s.data for s in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        x.shape, target, [shards[d] for d in local.devices.flat])
  return jax.tree.map(put, tree)
