"""Per-device memory of the self-training loop's jitted calls, at real scale.

Compiles, never runs, each call the loop makes with a config's settings at a
real model's shapes, with the parameters laid out over the config's mesh
block (`mesh.fsdp` x `mesh.tensor` simulated CPU devices), and prints XLA's
buffer sizes per device: arguments (parameters, optimizer state, inputs),
outputs that do not reuse an argument's buffer, and temporaries. No weights
are read: the shapes come from a checkpoint's `config.json` or a built-in
Qwen2.5 size.

    python bench/memory.py --model=qwen2.5-0.5b \
        --config=configs/gsm8k_qwen2.py:unused
    python bench/memory.py --model=/path/to/Qwen2.5-7B-Instruct \
        --config=configs/gsm8k_qwen2.py:unused --config.mesh.fsdp=8

Calls: `collect` (MCTS* over `search_batch` questions), `train policy` and
`train value` (one AdamW step at `train.batch_size` x the longest sequence a
search can produce, rounded up to a length bucket; per device: divided over
fsdp), and per evaluation method the call at `eval.batch_size` questions and
the largest of `eval.budgets`. These are XLA:CPU's buffer assignments; an
accelerator's compiler fuses differently, so read temporaries as an estimate
(arguments are exact).
"""

import dataclasses
import pathlib
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import config_flags
import numpy as np

from restmcts_jax import distributed
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax.models import presets
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.models import value_head
from restmcts_jax.search import mcts_star
from restmcts_jax.training import batching
from restmcts_jax.training import optim
from restmcts_jax.training import sharding
from restmcts_jax.training import steps as training_steps

# Config files import `configs.*`, which lives next to `bench/`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

CALLS = ("collect", "train_policy", "train_value", "greedy", "sc", "bon",
         "tot", "mcts")


def _abstract(state, shardings):
  """ShapeDtypeStructs of `state` carrying `shardings`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)


@dataclasses.dataclass
class Row:
  call: str
  shape: str
  arguments: int
  outputs: int
  temporaries: int
  compile_s: float

  @property
  def total(self) -> int:
    return self.arguments + self.outputs + self.temporaries


def _row(call, shape, lowered) -> Row:
  start = time.perf_counter()
  stats = lowered.compile().memory_analysis()
  return Row(call, shape, stats.argument_size_in_bytes,
             stats.output_size_in_bytes - stats.alias_size_in_bytes,
             stats.temp_size_in_bytes, time.perf_counter() - start)


def measure(config, model: transformer_lib.TransformerConfig,
            calls, eval_tokens_per_sample: int = 0) -> list[Row]:
  """One `Row` per call (see the module docstring); needs
  `config.mesh.fsdp * config.mesh.tensor` devices."""
  mesh = distributed.mesh(config.mesh.fsdp, config.mesh.tensor)
  block = distributed.search_mesh(mesh)
  rules = lambda: nnx.logical_axis_rules(
      sharding.complete_rules(sharding.DEFAULT_RULES))

  def build():
    policy = transformer_lib.Transformer(model, rngs=nnx.Rngs(0))
    return policy, value_head.make_value_model(policy, share_backbone=False,
                                               rngs=nnx.Rngs(1))

  with rules():
    policy, value_model = nnx.eval_shape(build)
    models_graph, models_state = nnx.split((policy, value_model))
    distributed.check_divisible(
        models_state, nnx.get_named_sharding(models_state, mesh))
    search_state = _abstract(models_state,
                             nnx.get_named_sharding(models_state, block))

  class _Tokenizer:  # the ids only matter for their count
    eos_id = 1

    def step_delimiter_ids(self):
      return (2,)

    def encode(self, text):
      return [3] * max(1, len(text.split()))

  sampler = experiment.sampler_config_for(config, _Tokenizer())
  q_width = config.question_width
  replicated = jax.sharding.NamedSharding(block, jax.sharding.PartitionSpec())

  def questions(n):
    return (jax.ShapeDtypeStruct((n, q_width), jnp.int32, sharding=replicated),
            jax.ShapeDtypeStruct((n,), jnp.int32, sharding=replicated),
            jax.eval_shape(lambda: jax.random.split(jax.random.key(0), n)))

  rows = []
  if "collect" in calls:
    n = config.search_batch
    lowered = mcts_star.search_lm.lower(
        models_graph, search_state, *questions(n), sampler,
        experiment.search_config_for(config))
    rows.append(_row("collect (MCTS*)",
                     f"{n} questions x {config.search.num_iterations} it",
                     lowered))

  longest = q_width + config.max_depth * config.sampler.max_step_len
  length = batching.bucket_length(longest, experiment.length_buckets(config))
  batch = config.train.batch_size
  experiment.check_batch_split(config, config.mesh.fsdp,
                               keys=("train.batch_size",))
  for call, what, loss_fn, example in (
      ("train_policy", policy, training_steps.sft_loss,
       training_steps.SFTBatch(tokens=np.zeros((batch, length), np.int32),
                               lengths=np.ones((batch,), np.int32),
                               prompt_len=np.ones((batch,), np.int32))),
      ("train_value", value_model, training_steps.value_loss,
       training_steps.ValueBatch(tokens=np.zeros((batch, length), np.int32),
                                 lengths=np.ones((batch,), np.int32),
                                 target=np.zeros((batch,), np.float32),
                                 weight=np.ones((batch,), np.float32)))):
    if call not in calls:
      continue
    tx = optim.make_optimizer(optim.OptimizerConfig(
        learning_rate=config.train.learning_rate))
    graph, params = nnx.split(what)
    with rules():
      state = jax.eval_shape(lambda p: training_steps.init_state(p, tx),
                             params)
      shardings = (training_steps.state_shardings(state, tx, mesh),
                   training_steps.batch_shardings(example, mesh))
    step = training_steps.make_train_step(graph, loss_fn, tx,
                                          shardings=shardings)
    lowered = step.lower(_abstract(state, shardings[0]),
                         _abstract(jax.eval_shape(lambda: example),
                                   shardings[1]))
    rows.append(_row(call.replace("_", " "),
                     f"batch {batch} x {length} tokens", lowered))

  n = config.eval.batch_size or config.eval.num_test
  budget = max(experiment.parse_budgets(config.eval.budgets))
  context = experiment.eval_context(config, _Tokenizer())
  common = dict(max_depth=config.max_depth)
  for method in ("greedy", "sc", "bon"):
    if method in calls:
      samples = 1 if method == "greedy" else budget
      lowered = evaluation.sample_solutions.lower(
          models_graph, search_state, *questions(n), sampler_config=sampler,
          num_samples=samples, score=method == "bon", **common)
      rows.append(_row(f"eval {method}", f"{n} questions x {samples}",
                       lowered))
  if "tot" in calls:
    beam = evaluation.tot_beam(budget, context.tot_branch, context.max_depth)
    lowered = evaluation._tot.lower(  # pylint: disable=protected-access
        models_graph, search_state, *questions(n), sampler_config=sampler,
        beam_width=beam, branch=context.tot_branch, **common)
    rows.append(_row("eval tot", f"{n} questions x beam {beam}", lowered))
  if "mcts" in calls:
    per_sample = eval_tokens_per_sample or (
        config.max_depth * config.sampler.max_step_len)
    search = dataclasses.replace(context.search_config,
                                 token_budget=budget * per_sample)
    lowered = mcts_star.search_lm.lower(models_graph, search_state,
                                        *questions(n), sampler, search)
    rows.append(_row("eval mcts",
                     f"{n} questions x {search.num_iterations} it", lowered))
  return rows


def table(rows: list[Row]) -> str:
  gib = lambda b: f"{b / 2**30:.2f}"
  header = (f"{'call':>16} | {'shape':>26} | {'arguments GiB':>13} | "
            f"{'outputs GiB':>11} | {'temps GiB':>9} | {'total GiB':>9} | "
            f"{'compile s':>9}")
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r.call:>16} | {r.shape:>26} | {gib(r.arguments):>13} | "
                 f"{gib(r.outputs):>11} | {gib(r.temporaries):>9} | "
                 f"{gib(r.total):>9} | {r.compile_s:>9.1f}")
  return "\n".join(lines)


def main(argv):
  del argv
  config = _CONFIG.value
  unknown = sorted(set(_CALLS.value) - set(CALLS))
  if unknown:
    raise app.UsageError(f"--calls: unknown {unknown}; known: {CALLS}")
  devices = config.mesh.fsdp * config.mesh.tensor
  jax.config.update("jax_num_cpu_devices", devices)  # simulated on CPU
  model = dataclasses.replace(presets.model_config(_MODEL.value),
                              dtype=experiment.compute_dtype(config))
  n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.eval_shape(
      lambda: transformer_lib.Transformer(model, rngs=nnx.Rngs(0)))))
  print(f"model {_MODEL.value}: {n_params / 1e6:,.1f}M parameters per model "
        f"(policy and value model), {jnp.dtype(model.param_dtype).name} "
        f"parameters, {jnp.dtype(model.dtype).name} compute; "
        f"mesh block fsdp={config.mesh.fsdp} x tensor={config.mesh.tensor} "
        f"({devices} {jax.devices()[0].platform.upper()} devices, jax "
        f"{jax.__version__}); per device:")
  print(table(measure(config, model, _CALLS.value,
                      _EVAL_TOKENS.value)))


if __name__ == "__main__":
  # Defined here, not at import: tests import this module next to
  # `restmcts_jax.main`, which defines `--config` too.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "The run's config file (with --config.x=... overrides).",
      lock_config=True)
  _MODEL = flags.DEFINE_string(
      "model", "qwen2.5-0.5b", "A checkpoint folder (its config.json is "
      f"read) or one of {sorted(presets.PRESETS)}.")
  _CALLS = flags.DEFINE_list("calls", list(CALLS),
                             f"Which calls to compile, of {CALLS}.")
  _EVAL_TOKENS = flags.DEFINE_integer(
      "eval_tokens_per_sample", 0,
      "L, the greedy solution's policy tokens that turn a budget into MCTS*'s "
      "token budget (0: max_depth x max_step_len); the buffers do not depend "
      "on it, only when the search stops.")
  app.run(main)
