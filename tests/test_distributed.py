"""Placing parameters on the loop's mesh and back onto the search devices."""

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec

from restmcts_jax import distributed
from restmcts_jax.training import sharding


def test_one_device_arrays_become_mesh_arrays_the_search_can_take():
  """A one-device process: fresh parameters live on `SingleDeviceSharding`s,
  equivalent to the mesh's layout; `to_global` must still label them with
  it, or `to_search` (which reads the spec) fails on any state that skipped
  training (e.g. `warmstart.value_steps=0`)."""
  device = jax.devices()[0]
  mesh = jax.sharding.Mesh(
      np.array([device]).reshape(1, 1, 1), sharding.MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * 3)
  host = dict(w=np.arange(6.0).reshape(2, 3), b=np.ones(3))
  tree = jax.tree.map(lambda x: jax.device_put(x, device), host)
  assert all(isinstance(x.sharding, jax.sharding.SingleDeviceSharding)
             for x in jax.tree.leaves(tree))
  placed = distributed.to_global(tree, NamedSharding(mesh, PartitionSpec()))
  assert all(isinstance(x.sharding, NamedSharding)
             for x in jax.tree.leaves(placed))
  searched = distributed.to_search(placed, mesh)
  for name in host:
    np.testing.assert_array_equal(searched[name], host[name])


class _Device:
  def __init__(self, process_index):
    self.process_index = process_index


class _Mesh:
  """What `search_group` reads of a mesh: its `[data, fsdp, tensor]` devices."""

  def __init__(self, processes, local_devices, fsdp, tensor):
    flat = [_Device(p) for p in range(processes) for _ in range(local_devices)]
    self.devices = np.array(flat, dtype=object).reshape(-1, fsdp, tensor)


def test_blocks_within_processes_make_one_search_group_per_process():
  mesh = _Mesh(processes=2, local_devices=4, fsdp=2, tensor=1)
  assert [distributed.search_group(mesh, p) for p in range(2)] == [
      distributed.SearchGroup(index=0, count=2, leader=True),
      distributed.SearchGroup(index=1, count=2, leader=True)]


def test_a_block_spanning_processes_makes_them_one_group_with_one_leader():
  mesh = _Mesh(processes=4, local_devices=2, fsdp=2, tensor=2)
  assert [distributed.search_group(mesh, p) for p in range(4)] == [
      distributed.SearchGroup(index=0, count=2, leader=True),
      distributed.SearchGroup(index=0, count=2, leader=False),
      distributed.SearchGroup(index=1, count=2, leader=True),
      distributed.SearchGroup(index=1, count=2, leader=False)]


@hypothesis.given(count=st.integers(0, 50), groups=st.integers(1, 8))
def test_group_shards_concatenate_to_all_items_in_order(count, groups):
  shards = [distributed.SearchGroup(index=i, count=groups).shard(count)
            for i in range(groups)]
  assert [i for s in shards for i in range(count)[s]] == list(range(count))


@pytest.mark.parametrize("local, total, fsdp, tensor, fits", [
    (8, 8, 2, 2, True),    # a block within the one process
    (2, 8, 2, 2, True),    # a block of two whole processes
    (2, 8, 4, 2, True),    # one block over all four processes
    (4, 12, 3, 2, False),  # 6 devices: half a process more than one
    (2, 8, 3, 1, False),   # 3 devices divide neither a process nor the job
])
def test_a_mesh_block_lies_within_a_process_or_spans_whole_ones(
    monkeypatch, local, total, fsdp, tensor, fits):
  monkeypatch.setattr(jax, "local_device_count", lambda: local)
  monkeypatch.setattr(jax, "device_count", lambda: total)
  if fits:  # the 8 simulated devices, grouped as asked
    assert distributed.mesh(fsdp, tensor).shape == dict(
        data=8 // (fsdp * tensor), fsdp=fsdp, tensor=tensor)
    return
  with pytest.raises(ValueError, match=f"config.mesh.fsdp={fsdp} x "
                     f"config.mesh.tensor={tensor} must divide"):
    distributed.mesh(fsdp, tensor)
