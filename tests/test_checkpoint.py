"""Checkpoints: round trip, keep-last-k, a process killed mid-save, restoring
onto another mesh, and a clear error for a missing checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from restmcts_jax import checkpoint
from restmcts_jax.models import transformer as tl
from restmcts_jax.training import optim
from restmcts_jax.training import sharding
from restmcts_jax.training import steps

CONFIG = tl.TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2,
                              num_heads=8, num_kv_heads=8, head_dim=4,
                              mlp_dim=64)


def _train_state(seed=0):
  tx = optim.make_optimizer(optim.OptimizerConfig())
  graphdef, params = nnx.split(tl.Transformer(CONFIG, rngs=nnx.Rngs(seed)))
  state = steps.init_state(params, tx)
  batch = steps.SFTBatch(
      tokens=jax.random.randint(jax.random.key(seed), (8, 10), 1, 64),
      lengths=jnp.full((8,), 10), prompt_len=jnp.full((8,), 3))
  state, _ = steps.make_train_step(graphdef, steps.sft_loss, tx)(state, batch)
  return state, tx


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_and_keep_last_k(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
  saved = {}
  for step in (1, 2, 3):
    state = dict(policy=_train_state(step)[0],
                 rng=jax.random.key_data(jax.random.key(step)))
    buffers = dict(records=np.arange(step * 4).reshape(step, 4))
    ckpt.save(step, state, buffers, dict(iteration=step, phase="value"))
    saved[step] = (state, buffers)
  assert ckpt.all_steps() == [2, 3]
  state, buffers, meta = ckpt.restore(checkpoint.abstract_like(saved[3][0]))
  assert meta == dict(iteration=3, phase="value")
  _assert_same(state, saved[3][0])
  np.testing.assert_array_equal(buffers["records"], saved[3][1]["records"])
  assert isinstance(state["policy"], steps.TrainState)
  state, _, meta = ckpt.restore(checkpoint.abstract_like(saved[2][0]), step=2)
  _assert_same(state, saved[2][0])
  # The buffers alone, without knowing the state's shapes.
  for step in (2, 3):
    np.testing.assert_array_equal(ckpt.read_buffers(step)["records"],
                                  saved[step][1]["records"])
  assert ckpt.read_buffers()["records"].shape == (3, 4)
  ckpt.save(4, saved[3][0], {}, dict(iteration=4))
  assert ckpt.read_buffers() == {}
  with pytest.raises(FileNotFoundError, match="no complete checkpoint 1 in"):
    ckpt.read_buffers(1)
  with pytest.raises(FileNotFoundError, match="no complete checkpoint 1 in"):
    ckpt.restore(checkpoint.abstract_like(saved[2][0]), step=1)


def test_missing_checkpoint_names_the_directory(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
    ckpt.restore(None)


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import orbax.checkpoint as ocp
    from restmcts_jax import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1])
    ckpt.save(1, dict(w=np.arange(1000, dtype=np.float32)), dict(b=np.ones(3)),
              dict(iteration=1))
    # A large second checkpoint, saved asynchronously: killed while writing.
    big = dict(w=np.random.default_rng(0).random(60_000_000, np.float32))
    ckpt._manager.save(2, args=ocp.args.Composite(
        state=ocp.args.StandardSave(big),
        buffers=ocp.args.StandardSave(dict(b=np.ones(3))),
        meta=ocp.args.JsonSave(dict(iteration=2))))
    print("saving", flush=True)
    ckpt._manager.wait_until_finished()
    print("finished", flush=True)
""")


def test_a_process_killed_mid_save_leaves_the_last_complete_checkpoint(
    tmp_path):
  directory = tmp_path / "ckpt"
  child = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory)],
                           stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert child.stdout.readline().strip() == "saving"
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert child.returncode == -signal.SIGKILL
  ckpt = checkpoint.Checkpointer(directory)
  assert ckpt.latest_step() == 1
  like = dict(w=jax.ShapeDtypeStruct((1000,), jnp.float32))
  state, buffers, meta = ckpt.restore(like)
  np.testing.assert_array_equal(state["w"], np.arange(1000, dtype=np.float32))
  np.testing.assert_array_equal(buffers["b"], np.ones(3))
  assert meta == dict(iteration=1)


def test_restore_a_2x2x2_sharded_state_onto_8x1x1(tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  rules = sharding.complete_rules(sharding.DEFAULT_RULES)
  state, tx = _train_state()

  def place(mesh_shape):
    mesh = sharding.make_mesh(mesh_shape)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      shardings = steps.state_shardings(state, tx, mesh)
    return jax.device_put(state, shardings), shardings

  saved, _ = place((2, 2, 2))
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(7, dict(policy=saved), {}, dict(iteration=7))
  _, target = place((8, 1, 1))
  restored, _, _ = ckpt.restore(
      dict(policy=checkpoint.abstract_like(state, target)))
  _assert_same(restored["policy"], state)
  for array, want in zip(jax.tree.leaves(restored["policy"]),
                         jax.tree.leaves(target)):
    assert array.sharding.is_equivalent_to(want, array.ndim)
