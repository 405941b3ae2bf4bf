"""bench/memory.py: the compiled programs' buffers hold the parameters and
AdamW's two moments, and a mesh block splits them."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from restmcts_jax import experiment
from restmcts_jax.models import presets
from restmcts_jax.models import transformer as tl

_PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "memory.py"
_spec = importlib.util.spec_from_file_location("bench_memory", _PATH)
memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory)


def _train_arguments(fsdp, tensor):
  config = tiny.get_config()
  config.mesh.fsdp, config.mesh.tensor = fsdp, tensor
  rows = memory.measure(config, presets.model_config("tiny"),
                        ["train_policy", "greedy"])
  assert [r.call for r in rows] == ["train policy", "eval greedy"]
  assert all(r.total > 0 for r in rows)
  return rows[0].arguments


def test_train_step_arguments_are_parameters_and_two_moments_split_by_block():
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  model = presets.model_config("tiny")
  abstract = nnx.eval_shape(lambda: tl.Transformer(model, rngs=nnx.Rngs(0)))
  params = sum(4 * np.prod(x.shape) for x in jax.tree.leaves(abstract))
  whole = _train_arguments(1, 1)
  # f32 parameters + AdamW's mu and nu, plus the batch shard and counters.
  assert 3 * params <= whole <= 3 * params + 64 * 1024
  # A 2 x 2 block holds about a quarter of them per device (norm scales and
  # the like stay replicated).
  assert _train_arguments(2, 2) < 0.35 * whole


def test_presets_and_config_json_give_the_architecture(tmp_path):
  qwen = presets.model_config("qwen2.5-7b")
  assert (qwen.num_layers, qwen.embed_dim, qwen.num_kv_heads) == (28, 3584, 4)
  assert qwen.qkv_bias and not qwen.tie_embeddings
  (tmp_path / "config.json").write_text(
      '{"architectures": ["LlamaForCausalLM"], "hidden_size": 32, '
      '"num_hidden_layers": 2, "num_attention_heads": 4, '
      '"intermediate_size": 64, "vocab_size": 100}')
  assert presets.model_config(str(tmp_path)).embed_dim == 32
  with pytest.raises(ValueError, match="--model=nowhere"):
    presets.model_config("nowhere")


def test_search_buffers_split_over_tensor():
  """The search's temporaries, per-node KV caches first, are split over the
  kv heads (`mesh.tensor`), not replicated on every device of the block."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  temporaries = {}
  for tensor in (1, 2):
    config = tiny.get_config()
    config.mesh.tensor = tensor
    config.search.num_iterations = 30  # 61 nodes: their caches dominate
    [row] = memory.measure(config, presets.model_config("tiny"), ["collect"])
    temporaries[tensor] = row.temporaries
  assert presets.model_config("tiny").num_kv_heads % 2 == 0
  assert temporaries[2] < 0.55 * temporaries[1]


def test_a_batch_that_does_not_split_over_the_block_names_the_key():
  config = tiny.get_config()
  config.mesh.fsdp, config.train.batch_size = 2, 3
  with pytest.raises(ValueError, match=r"config\.train\.batch_size=3 .* 2"):
    memory.measure(config, presets.model_config("tiny"), ["train_policy"])
  config.warmstart.batch_size = 5
  with pytest.raises(ValueError, match=r"config\.warmstart\.batch_size=5"):
    experiment.check_batch_split(config, 2)
