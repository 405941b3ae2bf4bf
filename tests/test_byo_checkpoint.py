"""Self-training from a local Hugging Face checkpoint folder and JSONL data
(configs/gsm8k_qwen2.py), on a tiny Qwen2 model and GSM8K sample lines."""

import importlib.util
import json
import pathlib

import pytest
from flax import nnx

from configs import game24
from configs import gsm8k_qwen2
from restmcts_jax import evaluate
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax import selftrain
from restmcts_jax.models import hf_io
from restmcts_jax.models import transformer as tr
from restmcts_jax.tasks import gsm8k
from restmcts_jax.tokenizer import load_tokenizer

_spec = importlib.util.spec_from_file_location(
    "bench_loop", pathlib.Path(__file__).resolve().parents[1] / "bench" /
    "loop.py")
_loop_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_loop_bench)

SAMPLE = (pathlib.Path(__file__).resolve().parent / "data"
    / "gsm8k_train_sample.jsonl")
NUM_TRAIN, NUM_TEST = 8, 4
TOKENIZER_VOCAB = 400


@pytest.fixture(name="data", scope="module")
def _data(tmp_path_factory):
  """`(train.jsonl, test.jsonl)`: the first sample lines, split."""
  folder = tmp_path_factory.mktemp("data")
  lines = SAMPLE.read_text().splitlines()
  train, test = folder / "train.jsonl", folder / "test.jsonl"
  train.write_text("\n".join(lines[:NUM_TRAIN]) + "\n")
  test.write_text("\n".join(lines[NUM_TRAIN:NUM_TRAIN + NUM_TEST]) + "\n")
  return train, test


def _tokenizer(texts):
  """A byte-level BPE trained offline on `texts`, with an EOS token."""
  return _loop_bench.byte_level_tokenizer(texts, TOKENIZER_VOCAB)


def _checkpoint(folder, data, vocab_size):
  """An HF folder: a tiny random Qwen2 of `vocab_size` and the tokenizer."""
  examples = gsm8k.load_jsonl(data[0]) + gsm8k.load_jsonl(data[1])
  tok = _tokenizer([e.question + "\n" + "\n".join(e.steps) + "\n"
                    for e in examples])
  model = tr.Transformer(
      tr.TransformerConfig(vocab_size=vocab_size, embed_dim=32, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                           qkv_bias=True, tie_embeddings=True),
      rngs=nnx.Rngs(0))
  hf_io.save_hf_checkpoint(model, folder, architecture="Qwen2ForCausalLM",
                           eos_token_id=tok.eos_token_id)
  tok.save_pretrained(folder)
  return folder


def _tiny_config(folder, data):
  """configs/gsm8k_qwen2.py shrunk to seconds on CPU."""
  config = gsm8k_qwen2.get_config(str(folder))
  config.data.update(train=str(data[0]), test=str(data[1]))
  tokenizer = load_tokenizer(folder)
  loaded = experiment.load_data(config)
  config.question_width = max(len(tokenizer.encode(p.question))
                              for p in loaded.train + loaded.test)
  config.sampler.max_step_len = 16
  config.max_depth = 3
  config.iterations = 1
  config.progress = False
  config.trees_per_iteration = 1
  config.warmstart.update(steps=2, batch_size=8)  # a multiple of 8 devices
  config.search.update(num_iterations=2, branch=2)
  config.search_questions = 4
  config.search_batch = 4
  config.train.update(policy_steps=2, value_steps=2, batch_size=8)
  config.eval.update(num_test=2, budget=1, budgets="1", mcts_iterations=2)
  return config


@pytest.mark.slow
def test_self_training_from_an_hf_checkpoint(tmp_path, data):
  folder = _checkpoint(tmp_path / "qwen2", data, vocab_size=512)
  assert load_tokenizer(folder).step_delimiter_ids()
  config = _tiny_config(folder, data)
  workdir = tmp_path / "run"
  metrics = selftrain.run(config, workdir)

  assert [m["iteration"] for m in metrics] == [0, 1]
  assert "warmstart_loss" in metrics[0]  # SFT on the reference steps
  for row in metrics:
    for method in evaluation.METHODS:
      assert 0.0 <= row[f"accuracy_{method}"] <= 1.0
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["hf_checkpoint"] == str(folder)
  assert not (workdir / experiment.TOKENIZER_FILE).exists()
  assert any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())

  results = evaluate.evaluate_checkpoint(
      workdir, task_name=None, data=None, methods=("greedy",), budget=1)
  assert [r.method for r in results] == ["greedy"]
  assert results[0].accuracy == metrics[-1]["accuracy_greedy"]


def _keys(config, prefix=""):
  """Dotted names of every leaf of a config."""
  out = set()
  for key, value in config.items():
    out |= (_keys(value, f"{prefix}{key}.") if hasattr(value, "items")
            else {f"{prefix}{key}"})
  return out


def test_config_has_the_keys_of_the_default():
  config = gsm8k_qwen2.get_config("/models/qwen2")
  assert _keys(config) == _keys(game24.get_config())
  assert config.model.hf_checkpoint == "/models/qwen2"
  assert config.task == "gsm8k" and config.warmstart.steps == 0


def test_config_needs_a_checkpoint_folder():
  with pytest.raises(ValueError, match="usage: --config "
                     r"configs/gsm8k_qwen2.py:/path/to/checkpoint"):
    gsm8k_qwen2.get_config("")


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, data):
  folder = _checkpoint(tmp_path / "qwen2", data, vocab_size=300)
  config = gsm8k_qwen2.get_config(str(folder))
  tokenizer = experiment.tokenizer_for(config, tmp_path, data=None)
  with pytest.raises(ValueError, match="do not belong together"):
    experiment.models_for(config, tokenizer)
