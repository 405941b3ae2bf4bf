"""Architectures of public checkpoints by name, for work that needs a model's
shapes but not its weights (memory estimates, throughput benchmarks)."""

import json
import pathlib

from restmcts_jax.models import hf_io
from restmcts_jax.models import transformer as transformer_lib

# Hugging Face `config.json` fields of the Qwen2.5 instruct models.
_QWEN25 = dict(architectures=["Qwen2ForCausalLM"], hidden_act="silu",
               rms_norm_eps=1e-6, rope_theta=1e6,
               max_position_embeddings=32768)
PRESETS = {
    "qwen2.5-0.5b": dict(_QWEN25, hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936,
                         tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(_QWEN25, hidden_size=1536, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(_QWEN25, hidden_size=3584, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, vocab_size=152064,
                       tie_word_embeddings=False),
    # The CPU default's model size, for quick checks of the tools.
    "tiny": dict(_QWEN25, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512,
                 tie_word_embeddings=False),
}


def hf_config(model: str) -> dict:
  """The `config.json` fields of a preset or of the folder `model`.

  Raises:
    ValueError: naming `model` (as the benchmarks' `--model` flag) when it
      is neither.
  """
  if model in PRESETS:
    return dict(PRESETS[model])
  path = pathlib.Path(model) / "config.json"
  if not path.is_file():
    raise ValueError(f"--model={model}: neither a preset ({sorted(PRESETS)}) "
                     f"nor a folder with a config.json")
  return json.loads(path.read_text())


def model_config(model: str) -> transformer_lib.TransformerConfig:
  """The architecture of a preset or of `model/config.json`.

  Raises:
    ValueError: as `hf_config`.
  """
  return hf_io.config_from_hf(hf_config(model))
