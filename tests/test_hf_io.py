"""HF checkpoint import/export against transformers, on tiny random models."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from restmcts_jax.models import hf_io
from restmcts_jax.models import transformer as tr

_SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 50_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
# name: (HF config class, extra config kwargs).
_FAMILIES = {
    "llama": (transformers.LlamaConfig, {}),
    "llama3_bias": (
        transformers.LlamaConfig,
        dict(attention_bias=True, rope_parameters=_LLAMA3_ROPE),
    ),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "mistral": (transformers.MistralConfig, dict(sliding_window=None)),
}
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "llama3_bias": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
_LENGTHS = np.array([12, 7, 3])


def _randomize_torch(model):
  """Weights large enough to matter; norms and biases off their init."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn_like(p)
      p.copy_(1 + 0.2 * noise if "norm" in name else 0.15 * noise)


def _hf_model(family, seed=0):
  """A tiny random HF model of `family`, f32, eager attention."""
  config_cls, kwargs = _FAMILIES[family]
  config = config_cls(**_SIZES, **kwargs, attn_implementation="eager")
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      config, dtype=torch.float32
  ).eval()
  _randomize_torch(model)
  return model


def _batch():
  """Right-padded tokens `[3, 12]` and their mask."""
  mask = np.arange(_LENGTHS.max())[None] < _LENGTHS[:, None]
  tokens = np.random.RandomState(0).randint(0, 128, mask.shape)
  return np.where(mask, tokens, 7), mask


def _hf_logits(model):
  tokens, mask = _batch()
  with torch.no_grad():
    out = model(torch.tensor(tokens), attention_mask=torch.tensor(mask).long())
  return out.logits.float().numpy()


def _our_logits(model):
  tokens = jnp.asarray(_batch()[0])
  logits, _, _ = model(tokens, tr.default_positions(tokens))
  return np.asarray(logits)


def _rel_err(x, ref):
  """Max abs error at real (unpadded) positions, relative to max |ref|."""
  mask = _batch()[1]
  return float(np.abs(x - ref)[mask].max() / np.abs(ref[mask]).max())


def _params(model):
  return {
      path: np.asarray(var.get_value(), np.float32)
      for path, var in nnx.iter_graph(model)
      if isinstance(var, nnx.Param)
  }


def _assert_same_params(a, b):
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_load_matches_transformers(family, tmp_path):
  hf = _hf_model(family)
  hf.save_pretrained(tmp_path)
  model = hf_io.load_hf_checkpoint(tmp_path)
  assert model.config.tie_embeddings == (family == "qwen2")
  assert model.config.qkv_bias == (family in ("qwen2", "llama3_bias"))
  assert model.config.out_bias == (family == "llama3_bias")
  if family == "llama3_bias":
    assert model.config.rope_theta == 50_000.0
    assert model.config.rope_llama3_scaling == (8.0, 1.0, 4.0, 32)
  assert _rel_err(_our_logits(model), _hf_logits(hf)) <= 1e-4


def _random_model(config, seed=0):
  """Our model with every parameter random (norm scales around 1)."""
  model = tr.Transformer(config, rngs=nnx.Rngs(seed))
  key = jax.random.key(seed)
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.Param):
      key, sub = jax.random.split(key)
      noise = jax.random.normal(sub, var.get_value().shape)
      var.set_value(1 + 0.2 * noise if path[-1] == "scale" else 0.15 * noise)
  return model


@pytest.mark.parametrize("family", ["llama3_bias", "qwen2", "mistral"])
def test_export_loads_in_transformers(family, tmp_path):
  # The config comes from an HF config, so the export covers what import does.
  config_cls, kwargs = _FAMILIES[family]
  architecture = _ARCHITECTURES[family]
  hf_config = config_cls(**_SIZES, **kwargs, architectures=[architecture])
  config = hf_io.config_from_hf(hf_config.to_dict())
  model = _random_model(config)
  folder = tmp_path / "ckpt"
  hf_io.save_hf_checkpoint(
      model, folder, architecture=architecture, eos_token_id=3
  )

  hf, info = transformers.AutoModelForCausalLM.from_pretrained(
      folder, output_loading_info=True, attn_implementation="eager"
  )
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info["mismatched_keys"]
  assert type(hf).__name__ == architecture
  assert hf.dtype == torch.float32 and hf.config.eos_token_id == 3
  assert _rel_err(_our_logits(model), _hf_logits(hf.eval())) <= 1e-4

  reloaded = hf_io.load_hf_checkpoint(folder)
  assert reloaded.config == config
  _assert_same_params(reloaded, model)


def test_sharded_checkpoint_equals_single_file(tmp_path):
  hf = _hf_model("llama")
  hf.save_pretrained(tmp_path / "single")
  hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  shards = list((tmp_path / "sharded").glob("model-*.safetensors"))
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  assert len(shards) > 2
  _assert_same_params(
      hf_io.load_hf_checkpoint(tmp_path / "sharded"),
      hf_io.load_hf_checkpoint(tmp_path / "single"),
  )


def test_bf16_checkpoint(tmp_path):
  hf = _hf_model("qwen2")
  ref = _hf_logits(hf)
  hf.to(torch.bfloat16).save_pretrained(tmp_path)
  # The bf16-rounded weights in an f32 model (`hf.float()` would also have
  # rounded the RoPE frequencies).
  rounded = _hf_model("qwen2")
  rounded.load_state_dict(hf.state_dict())
  model = hf_io.load_hf_checkpoint(tmp_path, param_dtype=jnp.bfloat16)
  assert model.embedding[...].dtype == jnp.bfloat16
  logits = _our_logits(model)
  assert _rel_err(logits, _hf_logits(rounded)) <= 1e-4
  # ...and close to the f32 original.
  assert _rel_err(logits, ref) <= 3e-2
  bf16_compute = hf_io.load_hf_checkpoint(
      tmp_path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16
  )
  assert _rel_err(_our_logits(bf16_compute), ref) <= 6e-2

  hf_io.save_hf_checkpoint(
      model, tmp_path / "out", architecture="Qwen2ForCausalLM"
  )
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["dtype"] == "bfloat16"
  _assert_same_params(
      hf_io.load_hf_checkpoint(tmp_path / "out", param_dtype=jnp.bfloat16),
      model,
  )


def test_extra_tensors_are_ignored(tmp_path):
  hf = _hf_model("qwen2")  # Tied: lm_head.weight is not needed.
  hf.save_pretrained(tmp_path)
  expected = hf_io.load_hf_checkpoint(tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
  inv_freq = "model.layers.0.self_attn.rotary_emb.inv_freq"
  tensors[inv_freq] = np.ones(8, np.float32)
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
  _assert_same_params(hf_io.load_hf_checkpoint(tmp_path), expected)


@pytest.fixture(name="llama_folder")
def _llama_folder(tmp_path):
  _hf_model("llama").save_pretrained(tmp_path)
  return tmp_path


def _rewrite(folder, edit):
  path = folder / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_unsupported_architecture(llama_folder):
  path = llama_folder / "config.json"
  config = json.loads(path.read_text())
  config["architectures"] = ["GPT2LMHeadModel"]
  path.write_text(json.dumps(config))
  with pytest.raises(ValueError) as e:
    hf_io.load_hf_checkpoint(llama_folder)
  assert str(path) in str(e.value) and "GPT2LMHeadModel" in str(e.value)


def test_missing_tensor(llama_folder):
  name = "model.layers.1.mlp.up_proj.weight"
  _rewrite(llama_folder, lambda t: t.pop(name))
  with pytest.raises(ValueError) as e:
    hf_io.load_hf_checkpoint(llama_folder)
  assert name in str(e.value)
  assert str(llama_folder / "model.safetensors") in str(e.value)


def test_misshaped_tensor(llama_folder):
  name = "model.layers.0.self_attn.k_proj.weight"  # [32, 64]
  _rewrite(llama_folder, lambda t: t.update({name: t[name][:16]}))
  with pytest.raises(ValueError) as e:
    hf_io.load_hf_checkpoint(llama_folder)
  message = str(e.value)
  assert name in message and "model.safetensors" in message
  assert "(16, 64)" in message and "(32, 64)" in message


def test_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere/config.json"):
    hf_io.load_hf_checkpoint(tmp_path / "nowhere")


def test_missing_weights(llama_folder):
  (llama_folder / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf_io.load_hf_checkpoint(llama_folder)


def _llama_config(**changes):
  return {
      "architectures": ["LlamaForCausalLM"],
      **_SIZES,
      "max_position_embeddings": 2048,
      **changes,
  }


def test_config_legacy_rope_fields():
  rope_scaling = {k: v for k, v in _LLAMA3_ROPE.items() if k != "rope_theta"}
  config = hf_io.config_from_hf(
      _llama_config(rope_theta=5e5, rope_scaling=rope_scaling)
  )
  assert config.rope_theta == 5e5
  assert config.rope_llama3_scaling == (8.0, 1.0, 4.0, 32)
  assert config.head_dim == 16 and config.num_kv_heads == 2
  assert not config.qkv_bias and not config.tie_embeddings


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(mlp_bias=True), "mlp_bias"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0}),
         "linear"),
        (dict(hidden_act="gelu"), "gelu"),
        (dict(architectures=["MistralForCausalLM"], sliding_window=512),
         "sliding_window=512"),
        (dict(architectures=["Qwen2ForCausalLM"], use_sliding_window=True,
              sliding_window=512, max_window_layers=1), "sliding_window=512"),
    ],
)
def test_config_rejects_unsupported(changes, message):
  with pytest.raises(ValueError, match=message):
    hf_io.config_from_hf(_llama_config(**changes))


def test_config_accepts_unused_sliding_window():
  for changes in [
      dict(architectures=["MistralForCausalLM"], sliding_window=4096,
           max_position_embeddings=4096),
      dict(architectures=["Qwen2ForCausalLM"], use_sliding_window=False,
           sliding_window=512),
      dict(architectures=["Qwen2ForCausalLM"], use_sliding_window=True,
           sliding_window=512, max_window_layers=2),
  ]:
    hf_io.config_from_hf(_llama_config(**changes))


def test_save_replaces_atomically(tmp_path, monkeypatch):
  model = _random_model(hf_io.config_from_hf(_llama_config()))
  folder = tmp_path / "ckpt"
  hf_io.save_hf_checkpoint(model, folder)
  hf_io.save_hf_checkpoint(model, folder, dtype=jnp.bfloat16)
  assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"

  def crash(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(safetensors.numpy, "save_file", crash)
  with pytest.raises(OSError, match="disk full"):
    hf_io.save_hf_checkpoint(model, folder)
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
  assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
  reloaded = hf_io.load_hf_checkpoint(folder)
  np.testing.assert_array_equal(
      reloaded.embedding[...], model.embedding[...].astype(jnp.bfloat16)
  )


def test_save_over_a_checkpoint_keeps_its_other_files(tmp_path):
  model = _random_model(hf_io.config_from_hf(_llama_config()))
  folder = tmp_path / "ckpt"
  folder.mkdir()
  (folder / "tokenizer.json").write_text("{}")
  (folder / "model-00001-of-00002.safetensors").write_text("stale")
  (folder / "model.safetensors.index.json").write_text("{}")
  hf_io.save_hf_checkpoint(model, folder)
  names = sorted(p.name for p in folder.iterdir())
  assert names == ["config.json", "model.safetensors", "tokenizer.json"]
  assert (folder / "tokenizer.json").read_text() == "{}"


def test_load_under_a_mesh_places_parameters_sharded(tmp_path):
  from jax.sharding import AxisType, PartitionSpec
  from restmcts_jax.training import sharding
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  model = _random_model(hf_io.config_from_hf(_llama_config()))
  hf_io.save_hf_checkpoint(model, tmp_path / "ckpt")
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"),
                       axis_types=(AxisType.Auto,) * 2)
  rules = sharding.complete_rules([("embed", "fsdp"), ("mlp", "tensor")])
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    loaded = hf_io.load_hf_checkpoint(tmp_path / "ckpt")
  gate = loaded.layers[0].mlp.gate_proj[...]
  assert gate.sharding.spec == PartitionSpec("fsdp", "tensor")
  np.testing.assert_array_equal(gate, model.layers[0].mlp.gate_proj[...])
