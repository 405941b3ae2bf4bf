"""The loop with parameters sharded over fsdp x tensor (8 simulated devices):
really sharded while training, searched with in place, and the same run as
with replicated parameters."""

import math

import jax
import pytest
from flax import nnx

from restmcts_jax import selftrain
from restmcts_jax import checkpoint
from tests import sums_task


def _config(tmp_path, fsdp, tensor):
  config = sums_task.config(sums_task.write_data(tmp_path / "sums.jsonl"))
  config.mesh.update(fsdp=fsdp, tensor=tensor)
  return config


def _shard_fraction(x: jax.Array) -> float:
  """Share of the array one device holds."""
  return x.addressable_shards[0].data.size / x.size


def test_parameters_stay_sharded_through_training(tmp_path):
  config = _config(tmp_path, fsdp=2, tensor=2)
  config.warmstart.steps = 3
  (tmp_path / "run").mkdir()
  loop = selftrain._Loop(config, tmp_path / "run",
                         checkpoint.Checkpointer(tmp_path / "ckpt"))
  meta = dict(current={}, metrics=[], evaluations=[])
  state, _ = loop.warmstart(loop.initial_state, selftrain.Buffers(), meta, 0)
  for params in (loop.initial_state, state):
    for x in jax.tree.leaves(params):
      assert x.sharding.mesh.shape == dict(data=2, fsdp=2, tensor=2)
    fractions = [_shard_fraction(x) for x in jax.tree.leaves(params)
                 if x.ndim]  # all but the value head's scalar bias
    # Every parameter is split: 2-D ones over fsdp x tensor, norms over fsdp.
    assert max(fractions) == 0.5 and min(fractions) == 0.25
  # Search devices: one fsdp x tensor block, each holding its shard.
  policy, _ = loop.models(state)
  searched = jax.tree.leaves(nnx.state(policy))
  assert all(len(x.sharding.device_set) == 4 for x in searched)
  assert min(map(_shard_fraction, searched)) == 0.25


def test_sharded_run_matches_replicated(tmp_path):
  """Both models train on what the search found, and every metric matches
  (losses to float tolerance: the reductions are split differently)."""
  runs = [selftrain.run(_config(tmp_path, f, t), tmp_path / f"run_{f}x{t}")
          for f, t in ((1, 1), (2, 2))]
  replicated, sharded = runs
  assert replicated[-1]["traces"] > 0 and replicated[-1]["value_records"] > 0
  assert replicated[-1]["policy_loss"] is not None
  for a, b in zip(replicated, sharded):
    assert a.keys() == b.keys()
    for key, value in a.items():
      if isinstance(value, float) and "loss" in key:
        assert math.isclose(value, b[key], rel_tol=1e-2), key
      else:
        assert value == b[key], key


def test_mesh_that_does_not_fit_a_process_names_the_key(tmp_path):
  with pytest.raises(ValueError, match="config.mesh.fsdp=3"):
    selftrain.run(_config(tmp_path, fsdp=3, tensor=1), tmp_path / "run")


def test_batch_not_split_evenly_names_the_key(tmp_path):
  config = _config(tmp_path, fsdp=2, tensor=2)  # batches split over 2 x 2
  config.train.batch_size = 6
  with pytest.raises(ValueError, match=r"config.train.batch_size=6 .* of 4"):
    selftrain.run(config, tmp_path / "run")
