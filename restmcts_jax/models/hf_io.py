"""Hugging Face checkpoints (Llama / Qwen2 / Mistral) ⇄ `Transformer`.

`load_hf_checkpoint` reads a `config.json` + safetensors folder (single file or
sharded with an index) into a `Transformer`; `save_hf_checkpoint` writes one
that `transformers.AutoModelForCausalLM.from_pretrained` loads. Both go through
`_TABLE`, which pairs each of our parameters with its HF tensor and the layout
transform between them.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from restmcts_jax.models.transformer import Transformer, TransformerConfig
from restmcts_jax.training import sharding

Array = jax.Array

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
}


@dataclasses.dataclass(frozen=True)
class _Transform:
  """HF tensor ⇄ our parameter.

  Attributes:
    to_ours: `(hf_tensor, our_shape) -> our_param`.
    to_hf: `our_param -> hf_tensor`; also gives the expected HF shape.
  """

  to_ours: Callable[[Array, tuple[int, ...]], Array]
  to_hf: Callable[[Array], Array]


_COPY = _Transform(lambda w, shape: w.reshape(shape), lambda x: x)
_BIAS = _Transform(lambda w, shape: w.reshape(shape), lambda x: x.reshape(-1))
# HF Linear weight `[out, in]`; ours `[in, *out]`.
_KERNEL = _Transform(
    lambda w, shape: w.T.reshape(shape), lambda x: x.reshape(x.shape[0], -1).T
)
# HF Linear weight `[out, in]`; ours `[*in, out]` (o_proj: `[heads, dim, E]`).
_OUT_KERNEL = _Transform(
    lambda w, shape: w.T.reshape(shape), lambda x: x.reshape(-1, x.shape[-1]).T
)

_ATTN = "model.layers.{i}.self_attn"
# (our parameter path, HF tensor name, transform); `{i}` is the layer index.
# Entries whose parameter the model does not have (biases, untied lm_head)
# are skipped.
_TABLE = (
    ("embedding", "model.embed_tokens.weight", _COPY),
    ("final_norm.scale", "model.norm.weight", _COPY),
    ("lm_head", "lm_head.weight", _KERNEL),
    ("layers.{i}.input_norm.scale",
     "model.layers.{i}.input_layernorm.weight", _COPY),
    ("layers.{i}.post_attn_norm.scale",
     "model.layers.{i}.post_attention_layernorm.weight", _COPY),
    ("layers.{i}.attn.q_proj", f"{_ATTN}.q_proj.weight", _KERNEL),
    ("layers.{i}.attn.k_proj", f"{_ATTN}.k_proj.weight", _KERNEL),
    ("layers.{i}.attn.v_proj", f"{_ATTN}.v_proj.weight", _KERNEL),
    ("layers.{i}.attn.o_proj", f"{_ATTN}.o_proj.weight", _OUT_KERNEL),
    ("layers.{i}.attn.q_bias", f"{_ATTN}.q_proj.bias", _BIAS),
    ("layers.{i}.attn.k_bias", f"{_ATTN}.k_proj.bias", _BIAS),
    ("layers.{i}.attn.v_bias", f"{_ATTN}.v_proj.bias", _BIAS),
    ("layers.{i}.attn.o_bias", f"{_ATTN}.o_proj.bias", _BIAS),
    ("layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.gate_proj.weight",
     _KERNEL),
    ("layers.{i}.mlp.up_proj", "model.layers.{i}.mlp.up_proj.weight", _KERNEL),
    ("layers.{i}.mlp.down_proj", "model.layers.{i}.mlp.down_proj.weight",
     _KERNEL),
)


def _params(model: Transformer) -> list[tuple[nnx.Variable, str, _Transform]]:
  """Every variable of `model` with its HF name and transform."""
  params = {
      ".".join(map(str, path)): var
      for path, var in nnx.iter_graph(model)
      if isinstance(var, nnx.Variable)
  }
  out = []
  for ours, hf, transform in _TABLE:
    layers = range(model.config.num_layers) if "{i}" in ours else [None]
    for i in layers:
      path = ours.format(i=i)
      if path in params:
        out.append((params.pop(path), hf.format(i=i), transform))
  if params:
    raise ValueError(f"no HF name for variables {sorted(params)}")
  return out


def _sliding_window(hf_config: dict[str, Any]) -> int | None:
  """The attention window some layer uses, as transformers decides it."""
  c = hf_config
  if c["architectures"][0] != "Qwen2ForCausalLM":
    return c.get("sliding_window")
  if not c.get("use_sliding_window", False):
    return None
  types = c.get("layer_types")
  if types is None:
    sliding = c.get("max_window_layers", 28) < c["num_hidden_layers"]
  else:
    sliding = "sliding_attention" in types
  return c.get("sliding_window") if sliding else None


def config_from_hf(
    hf_config: dict[str, Any], *, dtype=jnp.float32, param_dtype=jnp.float32
) -> TransformerConfig:
  """Our config for an HF `config.json` dict; ValueError if unsupported."""
  c = hf_config
  arch = (c.get("architectures") or [None])[0]
  if arch not in _MODEL_TYPES:
    raise ValueError(
        f"unsupported architecture {arch!r}; expected one of "
        f"{sorted(_MODEL_TYPES)}"
    )
  if c.get("hidden_act", "silu") != "silu":
    raise ValueError(f"unsupported hidden_act {c['hidden_act']!r}")
  if c.get("mlp_bias", False):
    raise ValueError("mlp_bias=True is not supported")
  window = _sliding_window(c)
  max_len = c.get("max_position_embeddings")
  if window is not None and (max_len is None or window < max_len):
    raise ValueError(
        f"sliding_window={window} is in use (max_position_embeddings="
        f"{max_len}) and not supported"
    )
  # transformers 5 writes `rope_parameters`; older configs `rope_theta` and
  # `rope_scaling`.
  rope = {**(c.get("rope_scaling") or {}), **(c.get("rope_parameters") or {})}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type == "default":
    llama3 = None
  elif rope_type == "llama3":
    llama3 = (
        float(rope["factor"]),
        float(rope["low_freq_factor"]),
        float(rope["high_freq_factor"]),
        int(rope["original_max_position_embeddings"]),
    )
  else:
    raise ValueError(f"unsupported rope_type {rope_type!r}")
  heads = c["num_attention_heads"]
  bias = arch == "Qwen2ForCausalLM" or c.get("attention_bias", False)
  return TransformerConfig(
      vocab_size=c["vocab_size"],
      embed_dim=c["hidden_size"],
      num_layers=c["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=c.get("num_key_value_heads") or heads,
      head_dim=c.get("head_dim") or c["hidden_size"] // heads,
      mlp_dim=c["intermediate_size"],
      rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10_000.0))),
      rope_llama3_scaling=llama3,
      norm_eps=c.get("rms_norm_eps", 1e-6),
      qkv_bias=bool(bias),
      out_bias=arch == "LlamaForCausalLM" and bool(bias),
      tie_embeddings=c.get("tie_word_embeddings", False),
      param_dtype=param_dtype,
      dtype=dtype,
  )


def _tensor_files(folder: pathlib.Path, names: list[str]) -> dict[str, str]:
  """The safetensors file (name within `folder`) expected to hold each name."""
  index = folder / _INDEX
  if index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    for name in names:
      if name not in weight_map:
        raise ValueError(f"tensor {name!r} is not listed in {index}")
    return {name: weight_map[name] for name in names}
  if not (folder / _WEIGHTS).is_file():
    raise FileNotFoundError(f"neither {folder / _WEIGHTS} nor {index} exists")
  return dict.fromkeys(names, _WEIGHTS)


def load_hf_checkpoint(
    folder: str | os.PathLike[str],
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
) -> Transformer:
  """Loads an HF Llama / Qwen2 / Mistral checkpoint folder.

  Args:
    folder: holds `config.json` and `model.safetensors` or a sharded
      `model.safetensors.index.json` with its shards.
    dtype: compute dtype of the model.
    param_dtype: the parameters are cast to it.

  Returns:
    The model; tensors it has no use for (e.g. rotary buffers) are ignored.
  """
  folder = pathlib.Path(folder)
  config_path = folder / _CONFIG
  if not config_path.is_file():
    raise FileNotFoundError(f"no HF checkpoint config at {config_path}")
  try:
    config = config_from_hf(json.loads(config_path.read_text()), dtype=dtype,
                            param_dtype=param_dtype)
  except KeyError as e:
    raise ValueError(f"{config_path} lacks field {e}") from e
  except ValueError as e:
    raise ValueError(f"{config_path}: {e}") from e

  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  params = _params(model)
  files = _tensor_files(folder, [hf for _, hf, _ in params])
  for file in sorted(set(files.values())):
    path = folder / file
    if not path.is_file():
      raise FileNotFoundError(f"missing weights file {path}")
    # framework="flax" reads bf16, which framework="numpy" cannot.
    with safetensors.safe_open(path, framework="flax") as f:
      keys = set(f.keys())
      for var, hf, transform in params:
        if files[hf] != file:
          continue
        if hf not in keys:
          raise ValueError(f"tensor {hf!r} is missing from {path}")
        shape = var.get_value().shape
        expected = jax.eval_shape(transform.to_hf, var.get_value()).shape
        tensor = f.get_tensor(hf)
        if tensor.shape != expected:
          raise ValueError(
              f"tensor {hf!r} in {path} has shape {tuple(tensor.shape)}, "
              f"expected {expected}"
          )
        value = transform.to_ours(tensor, shape).astype(param_dtype)
        # Inside `jax.set_mesh` + logical rules, lands sharded.
        var.set_value(sharding.place(value, var.get_metadata()["out_sharding"]))
  return model


def _hf_config(
    config: TransformerConfig, architecture: str, dtype: str, **extra
) -> dict[str, Any]:
  """An HF `config.json` dict for `config`; raises if `architecture` can't."""
  c = config
  biases = (c.qkv_bias, c.out_bias)
  allowed = {
      "LlamaForCausalLM": [(False, False), (True, True)],
      "Qwen2ForCausalLM": [(True, False)],
      "MistralForCausalLM": [(False, False)],
  }.get(architecture)
  if allowed is None:
    raise ValueError(f"unsupported architecture {architecture!r}")
  if biases not in allowed:
    raise ValueError(
        f"{architecture} cannot express qkv_bias={c.qkv_bias}, "
        f"out_bias={c.out_bias}"
    )
  rope = {"rope_type": "default", "rope_theta": c.rope_theta}
  if c.rope_llama3_scaling is not None:
    factor, low, high, old_len = c.rope_llama3_scaling
    rope.update(
        rope_type="llama3", factor=factor, low_freq_factor=low,
        high_freq_factor=high, original_max_position_embeddings=old_len,
    )
  hf = {
      "architectures": [architecture],
      "model_type": _MODEL_TYPES[architecture],
      "vocab_size": c.vocab_size,
      "hidden_size": c.embed_dim,
      "intermediate_size": c.mlp_dim,
      "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads,
      "num_key_value_heads": c.num_kv_heads,
      "head_dim": c.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": c.norm_eps,
      "rope_parameters": rope,
      "tie_word_embeddings": c.tie_embeddings,
      "dtype": dtype,
  }
  if architecture == "LlamaForCausalLM":
    hf.update(attention_bias=c.out_bias, mlp_bias=False)
  elif architecture == "Qwen2ForCausalLM":
    hf.update(use_sliding_window=False, sliding_window=None)
  else:
    hf.update(sliding_window=None)
  return {**hf, **extra}


def save_hf_checkpoint(
    model: Transformer,
    folder: str | os.PathLike[str],
    *,
    architecture: str = "LlamaForCausalLM",
    dtype=None,
    **config_fields,
) -> None:
  """Writes `model` as an HF checkpoint folder, replacing it atomically.

  Args:
    model: the model to save.
    folder: destination; written as a temporary sibling, then renamed.
    architecture: `LlamaForCausalLM`, `Qwen2ForCausalLM` or
      `MistralForCausalLM`.
    dtype: dtype of the saved tensors; defaults to the parameter dtype.
    **config_fields: extra `config.json` fields, e.g. `bos_token_id`,
      `eos_token_id`, `max_position_embeddings`.
  """
  folder = pathlib.Path(folder)
  dtype = jnp.dtype(model.config.param_dtype if dtype is None else dtype)
  hf_config = _hf_config(model.config, architecture, dtype.name,
                         **config_fields)
  tensors = {
      hf: np.asarray(transform.to_hf(var[...]).astype(dtype))
      for var, hf, transform in _params(model)
  }
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.",
                                      dir=folder.parent))
  try:
    tmp.chmod(0o755)
    (tmp / _CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    safetensors.numpy.save_file(tensors, tmp / _WEIGHTS,
                                metadata={"format": "pt"})
    if folder.exists():  # Swap by renames; the old copy goes last.
      # Keep what this function does not write (tokenizer files, ...), except
      # stale weights, which the new config would not match.
      for extra in folder.iterdir():
        stale = extra.name.startswith("model") and extra.name.endswith(
            (".safetensors", ".safetensors.index.json"))
        if not (tmp / extra.name).exists() and not stale:
          copy = shutil.copytree if extra.is_dir() else shutil.copy2
          copy(extra, tmp / extra.name)
      old = tmp.with_name(tmp.name + ".old")
      folder.rename(old)
      tmp.rename(folder)
      shutil.rmtree(old)
    else:
      tmp.rename(folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
