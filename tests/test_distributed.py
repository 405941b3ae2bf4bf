"""Placing parameters on the loop's mesh and back onto the search devices."""

import jax
import numpy as np
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
