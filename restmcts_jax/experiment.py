"""An experiment from its config and workdir: data, tokenizer, models, and
the samplers' and search's settings. Shared by the self-training loop and
`evaluate --checkpoint`.

Workdir layout:
  config.json       the config of the workdir's latest run
  config_history.jsonl  the configs a resumed run replaced (it may change
                    RESUMABLE_KEYS), each with the phase it stopped at
  tokenizer.model   the SentencePiece tokenizer (trained here unless the
                    config names a Hugging Face checkpoint folder)
  checkpoints/      orbax checkpoints (policy and value parameters, D_V,
                    D_G and metrics) after every phase
"""

import dataclasses
import importlib.util
import json
import os

import fsspec
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath
from flax import nnx

from restmcts_jax import checkpoint
from restmcts_jax import evaluation
from restmcts_jax import paths
from restmcts_jax import sampling
from restmcts_jax.models import hf_io
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.models import value_head
from restmcts_jax.rewards import initial_values
from restmcts_jax.search import mcts_star
from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry
from restmcts_jax.tokenizer import SentencePieceTokenizer
from restmcts_jax.tokenizer import Tokenizer
from restmcts_jax.tokenizer import load_tokenizer
from restmcts_jax.training import batching

CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
TOKENIZER_FILE = "tokenizer.model"
# Keys that may change between runs in one workdir (more iterations, another
# evaluation); any other difference would mix incompatible results.
# A run may continue with more iterations, more or fewer questions searched
# per iteration, other evaluation settings, or on another device layout
# (checkpoints restore onto any mesh).
RESUMABLE_KEYS = ("iterations", "search_questions", "eval", "progress",
                  "trees_per_iteration", "mesh")


@dataclasses.dataclass(frozen=True)
class Data:
  """Training and held-out problems, and the warm-start texts."""

  train: tuple[registry.Problem, ...]
  test: tuple[registry.Problem, ...]
  warmstart: tuple[tuple[str, str], ...]  # (prompt, prompt + solution)
  # Per training problem, whole solutions (text after the question) that the
  # initial value model's records `D_V0` are inferred from.
  value_warmstart: tuple[tuple[str, ...], ...]


def load_data(config, *, warm_start: bool = True) -> Data:
  """Game of 24: the bundled split (test = Tree-of-Thoughts ranks 901–1000;
  `config.eval.split="validation"` evaluates on the validation puzzles, the
  ones to tune on) and format-only warm-start texts. Other tasks:
  `config.data.train` / `config.data.test` files, warm-started on the
  training references.

  The value warm start (`D_V0`) sees, per training problem, random legal
  solutions (`config.warmstart.value_solutions` per Game of 24 puzzle; the
  oracle labels them; with `config.warmstart.complete_value_solutions` each
  is also finished by the solver wherever 24 is still in reach) or the
  reference solution. Without `warm_start` (evaluating a checkpoint), Game
  of 24 generates neither (they take seconds)."""
  task = registry.get_task(config.task)
  if config.task == "game24":
    splits = game24.splits(seed=config.seed)
    if config.eval.split not in ("test", "validation"):
      raise ValueError(f"config.eval.split={config.eval.split!r}: choose "
                       "'test' or 'validation'")
    held_out = getattr(splits, config.eval.split)[:config.eval.num_test]
    train = tuple(map(registry.game24_problem, splits.train))
    test = tuple(map(registry.game24_problem, held_out))
    if not warm_start:
      return Data(train, test, (), ())
    warmstart = game24.warmstart_corpus(
        splits.train, max(config.warmstart.examples,
                          config.tokenizer.corpus_size), seed=config.seed)
    # A format-only text's first line is its question.
    pairs = tuple((t.split("\n")[0] + "\n", t) for t in warmstart)
    samples = game24.random_solutions(
        splits.train, config.warmstart.value_solutions, seed=config.seed,
        completed=config.warmstart.complete_value_solutions)
    return Data(train, test, pairs, tuple(samples))
  if config.eval.split != "test":
    raise ValueError(f"config.eval.split={config.eval.split!r}: task "
                     f"{config.task!r} evaluates on config.data.test; point "
                     "it at a validation file to tune")
  for split in ("train", "test"):
    if not config.data.get(split):
      raise ValueError(f"config.data.{split}: task {config.task!r} needs a "
                       "data file")
  train = tuple(task.load(config.data.train))
  test = tuple(task.load(config.data.test))[:config.eval.num_test]
  warmstart = tuple((p.question, p.question + "\n".join(p.steps) + "\n")
                    for p in train if p.steps)
  references = tuple(("\n".join(p.steps) + "\n",) if p.steps else ()
                     for p in train)
  return Data(train, test, warmstart, references)


def initial_value_records(
    config, data: Data, tokenizer: Tokenizer, **options
) -> tuple[list[list[int]], list[float], list[int]]:
  """`D_V0`: the value records (token rows, Eq. 1-2 targets, depths) from
  `data.value_warmstart`'s solutions of the training problems, labelled by
  the task's oracle; `options` go to `initial_values.solution_records`."""
  task = registry.get_task(config.task)
  return initial_values.solution_records(
      [p.question for p in data.train], data.value_warmstart,
      [p.reference for p in data.train],
      encode=tokenizer.encode, decode=tokenizer.decode,
      is_correct=task.is_correct,
      delimiter_ids=tokenizer.step_delimiter_ids(),
      question_width=config.question_width,
      max_step_len=config.sampler.max_step_len, max_depth=config.max_depth,
      **options)


DEFAULT_COMPILATION_CACHE = "~/.cache/restmcts_jax/xla"


def enable_compilation_cache(directory: str) -> None:
  """Keeps compiled XLA programs in `directory` ('': off) across runs:
  reruns and resumed runs load them. At 0.5B one AdamW step compiles in
  20-30 s on an H100 per sequence-length bucket and loads from the cache in
  ~5 s (BENCHMARKS.md). A cache set through `JAX_COMPILATION_CACHE_DIR`
  stays in charge; a folder that cannot be written leaves the cache off, with
  a warning."""
  if not directory or jax.config.jax_compilation_cache_dir:
    return
  directory = os.path.expanduser(directory)
  if not paths.is_url(directory):  # a bucket needs no folder made
    try:
      os.makedirs(directory, exist_ok=True)
      if not os.access(directory, os.W_OK):
        raise PermissionError("not writable")
    except OSError as e:  # e.g. a read-only home: run without the cache
      logging.warning("no compilation cache in %s: %s", directory, e)
      return
  jax.config.update("jax_compilation_cache_dir", directory)


def workdir_path(workdir) -> epath.Path:
  """`workdir` as a path: a local folder (made absolute) or a URL such as
  gs://BUCKET/PATH, read and written through `etils.epath` (fsspec: gs://
  needs gcsfs, `pip install -e '.[gcs]'`).

  Raises:
    ValueError: naming --workdir when its URL scheme has no file system here.
  """
  text = str(workdir)
  scheme = text.split("://", 1)[0] if paths.is_url(text) else None
  if scheme is None:
    return epath.Path(os.path.abspath(text))
  try:
    path = epath.Path(text)
    # epath reads gs:// through TensorFlow where it is installed, else fsspec.
    if importlib.util.find_spec("tensorflow") is None or scheme != "gs":
      fsspec.get_filesystem_class(scheme)
    return path
  except (ImportError, ValueError, KeyError, NotImplementedError) as e:
    raise ValueError(
        f"--workdir={workdir}: cannot read or write {scheme}:// URLs here "
        f"({e}); for gs:// install the gcs extra (pip install -e '.[gcs]'), "
        "or use a local folder or a mounted bucket") from e


def _config_text(config) -> str:
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)


def write_config(config, workdir) -> None:
  """Writes `config.json` into a workdir that has none."""
  path = workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    paths.write_atomic(path, _config_text(config))


def update_config(config, workdir, resumes_at: str) -> None:
  """Makes `config.json` say what a resumed run uses from phase
  `resumes_at` on (e.g. "eval of iteration 2"): where `config` differs from
  it (in RESUMABLE_KEYS, as `check_config` allows, or in keys the file
  predates), the file is replaced and its old contents appended to
  `config_history.jsonl` with `resumes_at`, so earlier results keep a record
  of the settings they were made with."""
  path = workdir_path(workdir) / CONFIG_FILE
  written = json.loads(path.read_text())
  if written == json.loads(config.to_json()):
    return
  history = path.with_name(CONFIG_HISTORY_FILE)
  lines = history.read_text().splitlines() if history.exists() else []
  line = json.dumps(dict(replaced_at=resumes_at, config=written),
                    sort_keys=True)
  if not lines or lines[-1] != line:  # a kill between the two writes
    paths.write_atomic(history, "\n".join(lines + [line]) + "\n")
  paths.write_atomic(path, _config_text(config))


def check_config(config, workdir) -> None:
  """Raises ValueError naming the first key that differs from the
  workdir's `config.json` (other than RESUMABLE_KEYS)."""
  path = workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"no {path}: with several processes, the workdir must be one folder "
        "that every process sees")
  current = json.loads(config.to_json())
  written = json.loads(path.read_text())
  saved = json.loads(_backfilled(written, path).to_json())

  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = v
    return out

  a, b, in_file = flat(saved), flat(current), flat(written)
  for key in sorted(set(a) | set(b)):
    if key.split(".")[0] in RESUMABLE_KEYS:
      if a.get(key) != b.get(key):
        logging.info("config key %s is %r (%s has %r): allowed on resume",
                     key, b.get(key), path, a.get(key))
      continue
    if a.get(key) != b.get(key):
      says = (f"{path} says {a.get(key)!r}" if key in in_file else
              f"{path} predates the key (its run used {a.get(key)!r})")
      raise ValueError(
          f"config key {key} is {b.get(key)!r} but {says}: this workdir "
          "holds a run with another config (use a new --workdir, or the "
          "saved value)")


def check_batch_split(config, split: int,
                      keys=("warmstart.batch_size", "train.batch_size")):
  """Each of `keys` (training batch sizes) must divide over the `split`
  devices a batch is sharded over (data x fsdp)."""
  for key in keys:
    section, name = key.split(".")
    size = config[section][name]
    if size % split:
      raise ValueError(
          f"config.{key}={size} is not a multiple of {split}, the data x fsdp "
          "devices a batch is split over")


def tokenizer_for(config, workdir, data: Data) -> Tokenizer:
  """The config's HF checkpoint's tokenizer, the workdir's SentencePiece
  model, or a new one trained on the warm-start texts and the training
  questions (held-out text stays out of every part of training)."""
  if config.model.hf_checkpoint:
    return load_tokenizer(config.model.hf_checkpoint)
  path = workdir_path(workdir) / TOKENIZER_FILE
  if path.is_file():
    return SentencePieceTokenizer.load(path)
  # The first `corpus_size` warm-start texts are plenty to fit the pieces.
  corpus = data.warmstart[:config.tokenizer.corpus_size]
  texts = [t for _, t in corpus] + [p.question for p in data.train]
  return SentencePieceTokenizer.train(texts, path.with_suffix(""),
                                      vocab_size=config.tokenizer.vocab_size)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """`config.model.compute_dtype` as a dtype; ValueError naming the key."""
  name = config.model.compute_dtype
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.compute_dtype={name!r}: expected one of "
                     f"{sorted(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def models_for(config, tokenizer: Tokenizer):
  """`(policy, value_model)`: a new model sized by `config.model`, or the
  config's HF checkpoint; the value model starts from a copy of the policy.

  Raises:
    ValueError: when the tokenizer's ids do not fit the model's vocabulary.
  """
  m = config.model
  dtype = compute_dtype(config)
  if m.hf_checkpoint:
    policy = hf_io.load_hf_checkpoint(m.hf_checkpoint, dtype=dtype)
  else:
    policy = transformer_lib.Transformer(
        transformer_lib.TransformerConfig(
            vocab_size=tokenizer.vocab_size, embed_dim=m.embed_dim,
            num_layers=m.num_layers, num_heads=m.num_heads,
            num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
            mlp_dim=m.mlp_dim, dtype=dtype),
        rngs=nnx.Rngs(config.seed))
  check_vocab(tokenizer, policy.config.vocab_size,
              where=m.hf_checkpoint or "config.model")
  value_model = value_head.make_value_model(
      policy, share_backbone=False, rngs=nnx.Rngs(config.seed + 1))
  return policy, value_model


def check_vocab(tokenizer: Tokenizer, vocab_size: int, *, where) -> None:
  """ValueError naming `where` when the tokenizer has more ids than the
  model's embedding table."""
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(
        f"the tokenizer has {tokenizer.vocab_size} tokens but the model of "
        f"{where} has a vocabulary of {vocab_size}: they do not belong "
        "together")


def check_checkpoint_vocab(checkpoints, tokenizer: Tokenizer,
                           workdir) -> None:
  """ValueError naming the tokenizer when the latest checkpoint was trained
  with another vocabulary (e.g. `tokenizer.model` was replaced): another
  size, or (checkpoints that record it) other pieces."""
  meta = checkpoints.read_meta()
  saved = meta.get("vocab_size")
  if saved is not None and saved != tokenizer.vocab_size:
    raise ValueError(
        f"the tokenizer of {workdir} has {tokenizer.vocab_size} tokens but "
        f"the checkpoints in {checkpoints.directory} were trained with "
        f"{saved}: the tokenizer does not match the model")
  saved = meta.get("tokenizer_fingerprint")
  if saved is not None and saved != tokenizer.fingerprint():
    raise ValueError(
        f"the tokenizer of {workdir} has the size of the one the checkpoints "
        f"in {checkpoints.directory} were trained with ({saved[:12]}...) but "
        f"other pieces ({tokenizer.fingerprint()[:12]}...): the tokenizer "
        "does not match the model")


def sampler_config_for(config, tokenizer: Tokenizer) -> sampling.SamplerConfig:
  s = config.sampler
  marker = registry.get_task(config.task).answer_marker
  return sampling.SamplerConfig(
      max_step_len=s.max_step_len, temperature=s.temperature, top_k=s.top_k,
      top_p=s.top_p, stop_token_ids=tokenizer.step_delimiter_ids(),
      eos_token_id=tokenizer.eos_id,
      answer_marker_ids=tuple(tokenizer.encode(marker)))


def search_config_for(config, *, section: str = "search",
                      **overrides) -> mcts_star.MCTSConfig:
  """`config.search` with `overrides` over it; ValueError naming `section`
  (where the overrides come from) on settings that do not go together."""
  settings = dict(config.search.to_dict(), **overrides)
  try:
    return mcts_star.MCTSConfig(max_depth=config.max_depth,
                                max_step_len=config.sampler.max_step_len,
                                **settings)
  except ValueError as e:
    raise ValueError(f"config.{section}: {e}") from None


# The MCTS* settings an evaluation may set apart from the training search's.
EVAL_SEARCH_KEYS = ("branch", "roll_branch", "roll_forward_steps",
                    "exploration", "alpha", "unvisited_bonus", "end_gate",
                    "skip_exhausted", "max_expansions", "widen_visits",
                    "widen_after_final", "stop_at_end_gate",
                    "rollout_answers", "stochastic_budget")


def eval_search_settings(config) -> dict:
  """`config.eval.search`, checked: ValueError naming an unknown key."""
  settings = config.eval.search.to_dict()
  unknown = sorted(set(settings) - set(EVAL_SEARCH_KEYS))
  if unknown:
    raise ValueError(f"config.eval.search.{unknown[0]}: not an evaluation "
                     "search setting; choose from "
                     f"{', '.join(EVAL_SEARCH_KEYS)}")
  return settings


def eval_context(config, tokenizer: Tokenizer) -> evaluation.EvalContext:
  """Evaluation settings. MCTS* uses `config.search` with
  `config.eval.search` over it (as the paper does, searching one way to
  collect trees and another to answer), stops at the end gate unless
  `eval.search.stop_at_end_gate` is False, and only at a finished solution,
  capped at `config.eval.mcts_iterations`; without a gate node it answers
  with its best finished solution, as Best-of-N and ToT do. Its widening
  does not wait for a finished solution below unless `eval.search` says so
  (`widen_after_final` is a training-search setting, not inherited).
  """
  settings = {"stop_at_end_gate": True, "widen_after_final": False,
              **eval_search_settings(config)}
  return evaluation.EvalContext(
      tokenizer=tokenizer, task=registry.get_task(config.task),
      sampler_config=sampler_config_for(config, tokenizer),
      search_config=search_config_for(
          config, section="eval.search (over config.search)", **settings,
          num_iterations=config.eval.mcts_iterations,
          gate_requires_final=True,
          prefer_final_answer=True),
      max_depth=config.max_depth, question_width=config.question_width,
      tot_branch=config.eval.tot_branch,
      batch_size=config.eval.batch_size)


def parse_methods(text: str, key: str = "eval.methods") -> tuple[str, ...]:
  """`"greedy,sc"` -> `("greedy", "sc")`; ValueError naming `key` on an
  unknown method."""
  methods = tuple(m.strip() for m in text.split(",") if m.strip())
  unknown = [m for m in methods if m not in evaluation.METHODS]
  if unknown or not methods:
    raise ValueError(f"{key}={text!r}: unknown methods {unknown}; choose from "
                     f"{','.join(evaluation.METHODS)}")
  return methods


def length_buckets(config) -> tuple[int, ...]:
  """`config.train.length_buckets` as lengths ('': the default buckets);
  ValueError naming the key otherwise."""
  text = config.train.length_buckets
  if not text:
    return batching.DEFAULT_BUCKETS
  return parse_budgets(text, key="train.length_buckets")


def parse_budgets(text: str, key: str = "eval.budgets") -> tuple[int, ...]:
  """`"1,4,16"` -> `(1, 4, 16)`; ValueError naming `key` otherwise."""
  try:
    budgets = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
  except ValueError:
    budgets = ()
  if not budgets or min(budgets) < 1:
    raise ValueError(f"{key}={text!r}: expected positive integers "
                     "separated by commas, e.g. '1,4,16'")
  return budgets


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config saved in `workdir` (FileNotFoundError naming it if none)."""
  path = workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"no {CONFIG_FILE} in {workdir}: not a workdir of "
        "`python -m restmcts_jax.main`")
  return _backfilled(json.loads(path.read_text()), path)


def _backfilled(written: dict, path) -> ml_collections.ConfigDict:
  """The config `written` in `path`, with the keys it predates filled in."""
  config = ml_collections.ConfigDict(written)
  for key, value in _backfill(config).items():
    section, name = key.split(".")
    if section in config and name not in config[section]:
      logging.info("%s predates config key %s: using %r, what such runs did",
                   path, key, value)
      with config.unlocked():
        config[section][name] = value
  return config


def _backfill(config) -> dict:
  """Keys added since `train.replay` (older workdirs do not load), with the
  value that reproduces what a run written before the key existed did."""
  return {"model.compute_dtype": "float32", "eval.batch_size": 0,
          "warmstart.examples": config.tokenizer.get("corpus_size", 0),
          "warmstart.complete_value_solutions": False,
          "warmstart.value_first_steps": 0,
          "warmstart.value_first_step_share": 0.5,
          "train.length_buckets": "", "train.trace_history": "iteration",
          "train.value_loss": "mse", "train.value_tree_share": None,
          "search.skip_exhausted": False, "search.max_expansions": 1,
          "search.widen_visits": 0, "search.token_budget": 0,
          "search.widen_after_final": False,
          "search.stochastic_budget": False,
          "eval.search": {**{k: v for k, v in config.search.items()
                             if k in EVAL_SEARCH_KEYS},
                          "skip_exhausted": False, "max_expansions": 1,
                          "widen_visits": 0, "widen_after_final": False,
                          "stop_at_end_gate": True,
                          "rollout_answers": False,
                          "stochastic_budget": False}}



def restore(workdir):
  """`(config, tokenizer, (policy, value_model), meta)` of the latest
  checkpoint in a workdir of `python -m restmcts_jax.main`.

  Raises:
    FileNotFoundError: naming what is missing (the folder, its config, its
      tokenizer, a complete checkpoint).
    ValueError: when the tokenizer does not match the checkpoint.
  """
  workdir = workdir_path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f"no checkpoint folder at {workdir}")
  config = load_config(workdir)
  if not config.model.hf_checkpoint and not (workdir /
                                             TOKENIZER_FILE).is_file():
    raise FileNotFoundError(f"no {TOKENIZER_FILE} in {workdir}")
  folder = workdir / "checkpoints"
  if not folder.is_dir():
    raise FileNotFoundError(f"no checkpoints/ folder in {workdir}")
  tokenizer = tokenizer_for(config, workdir, data=None)
  policy, value_model = models_for(config, tokenizer)
  checkpoints = checkpoint.Checkpointer(folder)
  try:
    check_checkpoint_vocab(checkpoints, tokenizer, workdir)
    policy_graph, policy_params = nnx.split(policy)
    value_graph, value_params = nnx.split(value_model)
    state, _, meta = checkpoints.restore(checkpoint.abstract_like(
        dict(policy=policy_params, value=value_params)))
  finally:
    checkpoints.close()
  models = (nnx.merge(policy_graph, state["policy"]),
            nnx.merge(value_graph, state["value"]))
  return config, tokenizer, models, meta
