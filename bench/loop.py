"""Wall time, throughput and peak device memory of the self-training loop.

Runs `selftrain.run` (Algorithm 1: warm start and evaluation, then per
iteration collect, train and evaluate, a checkpoint after each phase) with a
config at a real model's shapes and prints one row per phase: wall seconds,
the part of them spent compiling, the device's peak memory so far and the
throughput. The model has random weights, saved as a local Hugging Face
folder with a byte-level BPE tokenizer trained on the data file: nothing is
downloaded and no weights are read.

    python bench/loop.py --model=qwen2.5-0.5b \
        --data=../shared/data/gsm8k_train_sample.jsonl \
        --config=configs/gsm8k_qwen2.py:unused --config.iterations=1 \
        --config.search_questions=32 --config.eval.num_test=16

A random policy rarely ends a solution, so its search trees grow to
`max_depth` with steps of `sampler.max_step_len` tokens (the search's worst
case per node) and yield no verified traces: the `train` phase then trains
the value model only. Set `--config.warmstart.steps` to time policy SFT in
the warm start.
"""

import dataclasses
import json
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import tokenizers
import transformers
from flax import nnx
from ml_collections import config_flags
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from restmcts_jax import selftrain
from restmcts_jax.models import hf_io
from restmcts_jax.models import presets
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.tasks import gsm8k

# Config files import `configs.*`, which lives next to `bench/`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_COMPILE_EVENTS = "/jax/core/compile/"
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def byte_level_tokenizer(texts, vocab_size: int):
  """A byte-level BPE with an EOS token, trained offline on `texts`."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["</s>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok,
                                              eos_token="</s>")


def random_checkpoint(folder: pathlib.Path, model: str, texts,
                      tokenizer_vocab: int, seed: int = 0) -> pathlib.Path:
  """A Hugging Face folder: the architecture `model` (a preset or a folder
  with a config.json) with random weights, and a tokenizer of
  `min(tokenizer_vocab, the model's vocabulary)` entries trained on `texts`.
  """
  hf = presets.hf_config(model)
  architecture = hf_io.config_from_hf(hf)
  tok = byte_level_tokenizer(texts, min(tokenizer_vocab,
                                        architecture.vocab_size))
  hf_io.save_hf_checkpoint(
      transformer_lib.Transformer(architecture, rngs=nnx.Rngs(seed)), folder,
      architecture=hf["architectures"][0], eos_token_id=tok.eos_token_id)
  tok.save_pretrained(folder)
  return folder


@dataclasses.dataclass
class Phase:
  """One phase of the loop as `PhaseRecorder` saw it."""

  name: str
  iteration: int
  seconds: float
  compile_seconds: float  # tracing, lowering and XLA compiling (or loading)
  compiles: int  # XLA programs built or loaded from a compilation cache
  peak_gib: float | None  # the device's peak so far; None where unreported
  # The iteration's metric values when the phase ended (`selftrain.run`).
  metrics: dict = dataclasses.field(default_factory=dict)
  throughput: str = ""


class PhaseRecorder:
  """Collects `Phase`s from `selftrain.run`'s `on_phase` calls: the compile
  events JAX reports inside each phase's wall-clock window, and the first
  local device's peak memory. Compiles between phases (set-up, checkpoints)
  add up in `outside_compile_seconds`. Use it as a context manager: it
  listens to JAX's events until closed."""

  def __init__(self):
    self.phases: list[Phase] = []
    self.outside_compile_seconds = 0.0
    self._events = []  # (perf_counter at the end, name, seconds)
    jax.monitoring.register_event_duration_secs_listener(self._event)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._event)

  def _event(self, name, seconds, **kwargs):
    del kwargs
    if name.startswith(_COMPILE_EVENTS):
      self._events.append((time.perf_counter(), name, seconds))

  def __call__(self, name: str, iteration: int, seconds: float,
               metrics: dict | None = None):
    start = time.perf_counter() - seconds
    inside = [(n, s) for end, n, s in self._events if end >= start]
    self.outside_compile_seconds += sum(
        s for end, _, s in self._events if end < start)
    self._events = []
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    phase = Phase(name, iteration, seconds, sum(s for _, s in inside),
                  sum(n == _BACKEND_COMPILE for n, _ in inside),
                  None if peak is None else peak / 2**30, dict(metrics or {}))
    self.phases.append(phase)
    # As it happens too, for runs cut off before the table.
    print(f"phase {name} {iteration}: {seconds:.1f} s, "
          f"compiling {phase.compile_seconds:.1f} s "
          f"({phase.compiles} programs)", flush=True)


def add_throughput(phases: list[Phase], config, num_train: int) -> None:
  """Fills each phase's throughput from its metrics, over the phase's seconds
  less its compile time (`num_train`: training questions, of which collect
  searches `config.search_questions`)."""
  for p in phases:
    row = p.metrics
    run_s = p.seconds - p.compile_seconds
    rate = lambda count, run_s=run_s: (f"{count / run_s:,.2f}/s"
                                       if run_s > 0 else "-/s")
    if p.name == "collect" and "search_policy_tokens" in row:
      questions = min(config.search_questions, num_train)
      tokens = row["search_policy_tokens"] * questions
      p.throughput = (f"{tokens:,.0f} policy tokens, {rate(tokens)}; "
                      f"{questions} questions, {rate(questions)}")
    elif p.name in ("warmstart", "train"):
      # Steps that ran: a training call without data is skipped.
      policy, value = (("warmstart_loss", "warmstart_value_loss")
                       if p.name == "warmstart" else
                       ("policy_loss", "value_loss"))
      c = config.warmstart if p.name == "warmstart" else config.train
      sft_steps = c.steps if p.name == "warmstart" else c.policy_steps
      steps = (sft_steps * (row.get(policy) is not None) +
               c.value_steps * (row.get(value) is not None))
      if row.get("warmstart_first_step_value_loss") is not None:
        steps += config.warmstart.value_first_steps
      p.throughput = f"{steps} AdamW steps, {rate(steps)}"
    elif p.name == "eval":
      tokens = {k[len("tokens_"):]: v for k, v in row.items()
                if k.startswith("tokens_")}
      p.throughput = "policy tokens per question: " + ", ".join(
          f"{m} {t:.0f}" for m, t in tokens.items())


def table(phases: list[Phase]) -> str:
  """The phases, one row each, with a header."""
  header = (f"{'phase':>9} | {'it':>2} | {'wall s':>7} | {'compile s':>9} | "
            f"{'programs':>8} | "
            f"{'peak GiB':>8} | throughput (compile excluded)")
  lines = [header, "-" * len(header)]
  for p in phases:
    peak = "-" if p.peak_gib is None else f"{p.peak_gib:.2f}"
    lines.append(f"{p.name:>9} | {p.iteration:>2} | {p.seconds:>7.1f} | "
                 f"{p.compile_seconds:>9.1f} | {p.compiles:>8} | {peak:>8} | "
                 f"{p.throughput}")
  return "\n".join(lines)


def _split_data(data: pathlib.Path, folder: pathlib.Path, num_test: int):
  """`(train.jsonl, test.jsonl)`: the first `num_test` lines are the test."""
  lines = data.read_text().splitlines()
  if len(lines) <= num_test:
    raise ValueError(f"--data={data} has {len(lines)} lines; needs more than "
                     f"config.eval.num_test={num_test}")
  train, test = folder / "train.jsonl", folder / "test.jsonl"
  test.write_text("\n".join(lines[:num_test]) + "\n")
  train.write_text("\n".join(lines[num_test:]) + "\n")
  return train, test


def main(argv):
  del argv
  config = _CONFIG.value
  scratch = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="loop_"))
  scratch.mkdir(parents=True, exist_ok=True)
  train, test = _split_data(pathlib.Path(_DATA.value), scratch,
                            config.eval.num_test)
  train_examples = gsm8k.load_jsonl(train)
  examples = train_examples + gsm8k.load_jsonl(test)
  start = time.perf_counter()
  folder = random_checkpoint(
      scratch / "model", _MODEL.value,
      [e.question + "\n" + "\n".join(e.steps) + "\n" for e in examples],
      _TOKENIZER_VOCAB.value)
  print(f"random {_MODEL.value} checkpoint and tokenizer written in "
        f"{time.perf_counter() - start:.1f} s")
  with config.unlocked():
    config.model.hf_checkpoint = str(folder)
    config.data.update(train=str(train), test=str(test))
  with PhaseRecorder() as recorder:
    start = time.perf_counter()
    metrics = selftrain.run(config, scratch / "run", on_phase=recorder)
    total = time.perf_counter() - start
  add_throughput(recorder.phases, config, len(train_examples))
  device = jax.devices()[0]
  print(f"model {_MODEL.value} (random weights), "
        f"{jax.device_count()} x {device.device_kind} ({device.platform}), "
        f"jax {jax.__version__}; compute {config.model.compute_dtype}; "
        f"search {config.search_questions} questions x "
        f"{config.search.num_iterations} it in batches of "
        f"{config.search_batch}; eval {config.eval.num_test} questions")
  print(table(recorder.phases))
  phases_s = sum(p.seconds for p in recorder.phases)
  print(f"total {total:.1f} s; set-up and checkpoints outside the phases "
        f"{total - phases_s:.1f} s, of them compiling "
        f"{recorder.outside_compile_seconds:.1f} s")
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(dict(
        model=_MODEL.value, device=device.device_kind,
        jax=jax.__version__, total_seconds=total,
        outside_compile_seconds=recorder.outside_compile_seconds,
        phases=[dataclasses.asdict(p) for p in recorder.phases],
        metrics=metrics), indent=1, default=float))


if __name__ == "__main__":
  # Defined here, not at import: tests import this module next to
  # `restmcts_jax.main`, which defines `--config` too.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "configs/gsm8k_qwen2.py:unused",
      "The run's config file (with --config.x=... overrides); its "
      "model.hf_checkpoint and data files are replaced.", lock_config=True)
  _MODEL = flags.DEFINE_string(
      "model", "qwen2.5-0.5b", "A checkpoint folder (its config.json is "
      f"read, not its weights) or one of {sorted(presets.PRESETS)}.")
  _DATA = flags.DEFINE_string("data", None, "A GSM8K JSONL file.",
                              required=True)
  _WORKDIR = flags.DEFINE_string("workdir", None,
                                 "Scratch folder (default: a new temp one).")
  _TOKENIZER_VOCAB = flags.DEFINE_integer(
      "tokenizer_vocab", 8000, "BPE entries (at most the model's vocabulary).")
  _JSON = flags.DEFINE_string("json", None, "Also write the rows here.")
  app.run(main)
