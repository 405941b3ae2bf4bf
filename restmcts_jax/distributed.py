"""Multi-process helpers: start-up, question shards, gathering variable-size
host data, the device mesh, and moving parameters between it and the devices
a process searches on.

One process per host (Cloud TPU VM worker, GPU node), or several on one
machine for tests (CPU collectives over loopback). Search and evaluation run
on `fsdp` x `tensor` blocks of devices: a block lies within one process, or,
for a model too large for one host, spans whole processes that then search
the same questions together (a search group). Each group searches its share
of the questions; the results are gathered so every process holds the same
training data; training runs on a mesh over all devices of all processes.
"""

import dataclasses
import functools

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

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


@dataclasses.dataclass(frozen=True)
class SearchGroup:
  """The processes that search the same questions on one block of devices.

  Attributes:
    index: this group's position among all groups (groups are ordered by
      their processes).
    count: how many groups there are.
    leader: this process is its group's first; only leaders contribute rows
      to `allgather_rows`, so a group's results count once.
  """

  index: int = 0
  count: int = 1
  leader: bool = True

  def shard(self, count: int) -> slice:
    """This group's contiguous share of `count` items: concatenating the
    shards in group order gives the items in their original order."""
    return slice(count * self.index // self.count,
                 count * (self.index + 1) // self.count)


def search_group(global_mesh: jax.sharding.Mesh,
                 process: int | None = None) -> SearchGroup:
  """The search group of `process` (default: this one) on `global_mesh`: the
  processes holding a device of its `search_mesh` block."""
  process = jax.process_index() if process is None else process
  groups = sorted({_block_processes(block) for block in global_mesh.devices})
  mine = _block_processes(_search_block(global_mesh, process))
  return SearchGroup(index=groups.index(mine), count=len(groups),
                     leader=mine[0] == process)


def _block_processes(block: np.ndarray) -> tuple[int, ...]:
  return tuple(sorted({d.process_index for d in block.flat}))


def allgather_rows(arrays: dict[str, np.ndarray], include: bool = True
                   ) -> dict[str, np.ndarray]:
  """Concatenates, in process order, every process's arrays (same keys and
  dtypes; any leading size, any second size for 2-D arrays).

  Every process gets the same result, in the local dtypes; with one process
  it is `arrays`. 64-bit values travel as 32-bit ones (no jax_enable_x64).
  A process with `include=False` (a search group's non-leader, holding a
  copy of its leader's rows) takes part but adds no rows.
  """
  if jax.process_count() == 1:
    return arrays
  if not include:
    arrays = {k: np.asarray(v)[:0] for k, v in arrays.items()}
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

  Parameters are sharded over `fsdp` x `tensor` blocks of consecutive devices
  (ordered by process); `data` spans the blocks. A block lies within one
  process, which then holds a whole copy of the parameters and searches on
  its own, or spans whole processes, which search together.

  Raises:
    ValueError: naming `config.mesh` if a block neither divides a process's
      devices nor is made of whole processes.
  """
  local, block = jax.local_device_count(), fsdp * tensor
  total = jax.device_count()
  if (fsdp < 1 or tensor < 1 or total % block
      or (local % block and block % local)):
    raise ValueError(
        f"config.mesh.fsdp={fsdp} x config.mesh.tensor={tensor} must divide "
        f"the {local} devices of each process, or be a multiple of them "
        f"that divides all {total} devices (a block spanning processes)")
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


def _search_block(global_mesh: jax.sharding.Mesh, process: int) -> np.ndarray:
  """The first `[1, fsdp, tensor]` block of `global_mesh` holding a device of
  `process`."""
  blocks = global_mesh.devices.reshape(-1, 1, *global_mesh.devices.shape[1:])
  return next(b for b in blocks
              if any(d.process_index == process for d in b.flat))


def search_mesh(global_mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """This process's first `fsdp` x `tensor` block of `global_mesh` (the
  devices its search and evaluation run on, other processes' too when the
  block spans processes), as a mesh with `data` = 1."""
  return jax.sharding.Mesh(_search_block(global_mesh, jax.process_index()),
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
  """Global arrays on a `mesh(...)` -> their copy on this process's
  `search_mesh`: each of those devices already holds its shard, so nothing
  moves."""
  block = search_mesh(mesh)
  mine = [d for d in block.devices.flat
          if d.process_index == jax.process_index()]

  def put(x):
    target = NamedSharding(block, x.sharding.spec)
    shards = {s.device: s.data for s in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        x.shape, target, [shards[d] for d in mine])
  return jax.tree.map(put, tree)


def fetch(tree):
  """`jax.device_get` that also takes outputs of a search on a block spanning
  processes: an array this process holds only part of is first replicated
  over its block (every process of the block must call this with the same
  tree)."""
  leaves, treedef = jax.tree.flatten(tree)
  partial = [i for i, x in enumerate(leaves)
             if isinstance(x, jax.Array) and not x.is_fully_addressable
             and not x.is_fully_replicated]
  if partial:
    gathered = _replicator(tuple(
        NamedSharding(leaves[i].sharding.mesh, PartitionSpec())
        for i in partial))(*[leaves[i] for i in partial])
    for i, x in zip(partial, gathered):
      leaves[i] = x
  return jax.device_get(jax.tree.unflatten(treedef, leaves))


@functools.lru_cache(maxsize=None)
def _replicator(shardings: tuple[NamedSharding, ...]):
  """One jitted copy per set of target shardings (compiled once per shapes,
  not once per call)."""
  return jax.jit(lambda *xs: xs, out_shardings=shardings)
