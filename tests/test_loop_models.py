"""The loop's two models: parameters sharded over fsdp x tensor (8 simulated
devices) while training and searched with in place, the same run as with
replicated parameters; the value model starting from the warm-started policy;
the policy's SFT mix of verified traces and warm-start examples, and which
traces it reads (this iteration's or all so far)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
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
  loop = selftrain.Loop(config, tmp_path / "run",
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


@pytest.mark.slow
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


def test_mesh_that_does_not_divide_the_kv_heads_names_the_key(tmp_path):
  # The tiny model has 2 kv heads; 4-way tensor parallelism cannot split them.
  with pytest.raises(ValueError, match=r"config.mesh.tensor=4 does not "
                     r"divide dimension 2 of .*(k_proj|v_proj)"):
    selftrain.run(_config(tmp_path, fsdp=1, tensor=4), tmp_path / "run")


def test_batch_not_split_evenly_names_the_key(tmp_path):
  config = _config(tmp_path, fsdp=2, tensor=2)  # batches split over 2 x 2
  config.train.batch_size = 6
  with pytest.raises(ValueError, match=r"config.train.batch_size=6 .* of 4"):
    selftrain.run(config, tmp_path / "run")


def _loop(tmp_path, config):
  (tmp_path / "run").mkdir()
  return selftrain.Loop(config, tmp_path / "run",
                         checkpoint.Checkpointer(tmp_path / "ckpt"))


def test_value_model_starts_from_the_warm_started_policy(tmp_path):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.warmstart.update(steps=3, value_steps=0, value_first_steps=0)
  loop = _loop(tmp_path, config)
  meta = dict(current={}, metrics=[], evaluations=[])
  start = jax.device_get(jax.tree.leaves(loop.initial_state["policy"]))
  state, _ = loop.warmstart(loop.initial_state, selftrain.Buffers(), meta, 0)
  policy = jax.tree.leaves(state["policy"])
  backbone = jax.tree.leaves(state["value"]["backbone"])
  assert all(np.array_equal(a, b) for a, b in zip(policy, backbone))
  assert not all(np.array_equal(a, b) for a, b in zip(policy, start))
  # Own buffers: training one model must not touch the other.
  pointer = lambda x: x.addressable_shards[0].data.unsafe_buffer_pointer()
  assert all(pointer(a) != pointer(b) for a, b in zip(policy, backbone))


@pytest.mark.parametrize("replay", [0.0, 0.25])
def test_policy_sft_mixes_traces_and_warm_start_examples(tmp_path, replay):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.train.update(policy_steps=5, batch_size=8, replay=replay)
  loop = _loop(tmp_path, config)
  traces = [([7, 8, 9], 1), ([7, 9], 1), ([8, 8, 8, 8], 2)]
  examples = loop._policy_examples(traces, 0, loop.config.train)
  assert len(examples) == 40
  from_traces = [e for e in examples if e in traces]
  assert len(from_traces) == 40 - round(replay * 40)
  for trace in traces:  # each trace about equally often
    assert abs(from_traces.count(trace) - len(from_traces) / 3) <= 1
  warm = {(tuple(loop.tokenizer.encode(text)),
           len(loop.tokenizer.encode(prompt)))
          for prompt, text in loop.data.warmstart}
  assert all((tuple(t), n) in warm for t, n in examples if (t, n) not in traces)


def test_policy_sft_on_more_traces_than_slots_takes_a_random_subset(
    tmp_path):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.train.update(policy_steps=5, batch_size=8, replay=0.0)
  loop = _loop(tmp_path, config)
  traces = [([7, 8, 9 + i], 1) for i in range(50)]
  examples = loop._policy_examples(traces, 0, loop.config.train)
  assert len(examples) == 40 and all(e in traces for e in examples)
  assert len({tuple(t) for t, _ in examples}) == 40  # each at most once
  assert examples != traces[:40]  # not the first ones gathered
  assert loop._policy_examples(traces, 1, loop.config.train) != examples


@pytest.mark.parametrize("share", [None, 0.0, 0.25, 0.75])
def test_value_training_mixes_tree_records_and_d_v0(tmp_path, share):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.train.update(value_steps=5, batch_size=8, value_tree_share=share)
  loop = _loop(tmp_path, config)
  initial, initial_targets, _ = loop.initial_value_records
  buffers = selftrain.Buffers(value_rows=[[7, 8, 9], [7, 9], [8, 8, 8, 8]],
                              value_targets=[0.9, 0.1, -0.5])
  rows, targets = loop._value_examples(buffers, 0, loop.config.train)
  assert len(rows) == len(targets)
  tree = {tuple(r): t for r, t in zip(buffers.value_rows,
                                      buffers.value_targets)}
  known = dict(zip(map(tuple, initial), initial_targets)) | tree
  assert all(known[tuple(r)] == t for r, t in zip(rows, targets))
  from_trees = [tuple(r) for r in rows if tuple(r) in tree]
  if share is None:  # SPEC's union, every record once
    assert len(rows) == len(initial) + 3 and len(from_trees) == 3
    return
  assert len(rows) == 40 and len(from_trees) == round(share * 40)
  for row in tree:  # each tree record about equally often
    assert abs(from_trees.count(row) - len(from_trees) / 3) <= 1


def test_policy_traces_of_this_iteration_or_all_distinct_ones_so_far():
  kept = [([7, 8, 9], 1), ([7, 9], 1)]
  found = [([7, 9], 1), ([7, 9], 2), ([8, 8], 1), ([8, 8], 1)]
  assert selftrain.policy_traces(kept, found, "iteration") == found
  assert selftrain.policy_traces(kept, found, "all") == [
      ([7, 8, 9], 1), ([7, 9], 1), ([7, 9], 2), ([8, 8], 1)]
  assert kept == [([7, 8, 9], 1), ([7, 9], 1)]  # not modified


@pytest.mark.parametrize("history", ["iteration", "all"])
def test_policy_sft_keeps_the_traces_only_for_all(tmp_path, history):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.train.update(policy_steps=2, batch_size=8, trace_history=history)
  loop = _loop(tmp_path, config)
  traces = [([7, 8, 9], 1), ([7, 9], 1)]
  meta = dict(current={}, metrics=[], evaluations=[])
  start = jax.device_get(jax.tree.leaves(loop.initial_state["policy"]))
  state, buffers = loop.train(loop.initial_state,
                              selftrain.Buffers(traces=list(traces)), meta, 1)
  trained = jax.device_get(jax.tree.leaves(state["policy"]))
  assert not all(np.array_equal(a, b) for a, b in zip(start, trained))
  assert buffers.traces == (traces if history == "all" else [])


def test_unknown_trace_history_names_the_key(tmp_path):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.train.trace_history = "every"
  with pytest.raises(ValueError, match="config.train.trace_history='every'"):
    selftrain.run(config, tmp_path / "run")


def test_a_tree_share_outside_0_1_names_the_key(tmp_path):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.train.value_tree_share = 1.5
  with pytest.raises(ValueError, match="config.train.value_tree_share=1.5"):
    selftrain.run(config, tmp_path / "run")


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_every_value_phase_uses_the_configured_loss(tmp_path, monkeypatch,
                                                    loss):
  traced = []  # the loss each traced value train step computed
  for name, real in list(selftrain.training_steps.VALUE_LOSSES.items()):
    def spy(model, batch, name=name, real=real):
      traced.append(name)
      return real(model, batch)
    monkeypatch.setitem(selftrain.training_steps.VALUE_LOSSES, name, spy)
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.warmstart.update(steps=1, value_steps=2, value_first_steps=2)
  config.train.update(value_steps=2, policy_steps=0, batch_size=8,
                      value_loss=loss)
  loop = _loop(tmp_path, config)
  meta = dict(current={}, metrics=[], evaluations=[])
  start = jax.device_get(jax.tree.leaves(loop.initial_state["value"]))
  state, _ = loop.warmstart(loop.initial_state, selftrain.Buffers(), meta, 0)
  state, _ = loop.train(state, selftrain.Buffers(
      value_rows=[[7, 8, 9], [7, 9]], value_targets=[0.25, 0.0]), meta, 1)
  assert traced and set(traced) == {loss}
  for key in ("warmstart_value_loss", "warmstart_first_step_value_loss",
              "value_loss"):
    assert np.isfinite(meta["current"][key]), key
  trained = jax.device_get(jax.tree.leaves(state["value"]))
  assert not all(np.array_equal(a, b) for a, b in zip(start, trained))


def test_unknown_value_loss_names_the_key(tmp_path):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.train.value_loss = "huber"
  with pytest.raises(ValueError, match="config.train.value_loss='huber'"):
    selftrain.run(config, tmp_path / "run")


@pytest.mark.slow
def test_bfloat16_compute_runs_the_loop_on_float32_parameters(tmp_path):
  """`model.compute_dtype=bfloat16`: both models compute (and search with KV
  caches) in bf16, parameters and AdamW stay f32; the run finds and trains on
  traces like the f32 run of `test_sharded_run_matches_replicated`."""
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.model.compute_dtype = "bfloat16"
  loop = _loop(tmp_path, config)
  policy, value_model = loop.models(loop.initial_state)
  assert policy.config.dtype == value_model.backbone.config.dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(loop.initial_state)} == {
      jnp.dtype(jnp.float32)}
  metrics = selftrain.run(config, tmp_path / "bf16")
  assert metrics[-1]["traces"] > 0 and metrics[-1]["value_records"] > 0
  assert np.isfinite(metrics[-1]["policy_loss"])
  assert np.isfinite(metrics[-1]["value_loss"])


def test_unknown_compute_dtype_names_the_key(tmp_path):
  config = _config(tmp_path, fsdp=1, tensor=1)
  config.model.compute_dtype = "float16"
  with pytest.raises(ValueError, match="config.model.compute_dtype='float16'"):
    selftrain.run(config, tmp_path / "run")
