"""The self-training loop (SPEC Algorithm 1) as resumable phases.

    warmstart  π <- SFT on D_0 (format-only texts / training references)
    eval       every method on held-out questions at equal token budgets
    then per iteration:
    collect    ReST-MCTS*: MCTS* over training questions, the verifier labels
               finished leaves -> D_V (Eq. 1-2) and D_G (verified traces);
               ReST-EM: N sampled solutions per question, the correct ones
               -> D_G (no value model)
    train      V <- value steps on D_V (accumulated over iterations);
               π <- SFT steps on this iteration's D_G
    eval       as above

A checkpoint (parameters, D_V, D_G, metrics) is written after every phase,
so a run killed at any moment continues from the last phase boundary and
ends with the same metrics; SIGTERM (preemption) stops it cleanly at the next
boundary. The oracle only labels training trees; at evaluation the policy and
the value model decide and the verifier grades.
"""

import dataclasses
import functools
import json
import pathlib
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from etils import epath
from flax import nnx

from restmcts_jax import checkpoint
from restmcts_jax import distributed
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax import paths
from restmcts_jax import plots
from restmcts_jax.rewards import traces as traces_lib
from restmcts_jax.rewards import value_targets
from restmcts_jax.search import mcts_star
from restmcts_jax.search import tree as tree_lib
from restmcts_jax.search import views
from restmcts_jax.tasks import registry
from restmcts_jax.training import batching
from restmcts_jax.training import sharding
from restmcts_jax.training import optim
from restmcts_jax.training import steps as training_steps

MODES = ("rest_mcts", "rest_em")
# Which verified traces policy SFT reads (`train.trace_history`): this
# iteration's D_G_i (SPEC) or every distinct one found so far.
TRACE_HISTORIES = ("iteration", "all")


def label_final_nodes(
    tree: tree_lib.Tree,
    task: registry.Task,
    references: Sequence,
    decode: Callable[[Sequence[int]], str],
    *,
    max_depth: int,
) -> np.ndarray:
  """`[B, N]` whether each final node's solution is correct (host side)."""
  final = np.asarray(tree.final) & np.asarray(tree.used)
  tokens, lengths, question = tree_lib.prefix_rows(tree, final,
                                                   max_depth=max_depth)
  correct = np.zeros(final.shape, bool)
  correct[final] = [
      task.is_correct(decode(row[:n].tolist()), references[q])
      for row, n, q in zip(tokens, lengths, question)
  ]
  return correct


def iteration_data(tree: tree_lib.Tree, correct: np.ndarray, *,
                   max_depth: int, top_k: int, min_reward: float):
  """`(D_V records, D_G traces)` of a batch of finished trees."""
  targets = jax.device_get(value_targets.infer_value_targets(
      tree, jnp.asarray(correct), max_depth=max_depth))
  records = value_targets.value_records(tree, targets, max_depth=max_depth)
  traces = traces_lib.select_traces(tree, correct, max_depth=max_depth,
                                    top_k=top_k, min_reward=min_reward)
  return records, traces


def search_labelled(graphdef, state, problems, questions, qlen, keys, *,
                    task: registry.Task, decode, sampler_config,
                    search_config, config, cache_nodes: bool = True):
  """MCTS* over a batch of training questions, its finished leaves labelled
  by the verifier (the oracle), and what the trees yield.

  Args:
    graphdef, state: `nnx.split((policy, value_model))`.
    problems: `[B]` the problems, with their references.
    questions, qlen, keys: their encoded questions `[B, W]`, lengths `[B]`
      and keys `[B]`.
    config: the run's config (`max_depth`, `train.traces_per_question`,
      `train.min_reward`).
    cache_nodes: as in `mcts_star.search_lm`.

  Returns:
    `(search result, correct [B, N], D_V records, D_G traces)` on the host.
  """
  result = distributed.fetch(mcts_star.search_lm(
      graphdef, state, jnp.asarray(questions), jnp.asarray(qlen), keys,
      sampler_config, search_config, cache_nodes=cache_nodes))
  correct = label_final_nodes(result.tree, task,
                              [p.reference for p in problems], decode,
                              max_depth=config.max_depth)
  records, found = iteration_data(
      result.tree, correct, max_depth=config.max_depth,
      top_k=config.train.traces_per_question,
      min_reward=config.train.min_reward)
  return result, correct, records, found


def iteration_problems(config, train: Sequence, iteration: int) -> list:
  """The `config.search_questions` training problems that iteration
  `iteration` searches (or samples), drawn from `train` by the run's seed."""
  picks = np.random.default_rng([config.seed, iteration]).choice(
      len(train), min(config.search_questions, len(train)), replace=False)
  return [train[i] for i in picks]


def sample_correct(graphdef, state, problems, questions, qlen, keys, *,
                   task: registry.Task, tokenizer, sampler_config,
                   num_samples: int, max_depth: int,
                   traces_per_question: int):
  """ReST-EM's data: `num_samples` solutions per question, the distinct
  correct ones (at most `traces_per_question`).

  Args:
    graphdef, state: `nnx.split((policy, value_model))`.
    problems: `[B]` the problems, with their references.
    questions, qlen, keys: their encoded questions `[B, W]`, lengths `[B]`
      and keys `[B]`.

  Returns `(traces, questions solved, policy tokens)`.
  """
  out = distributed.fetch(evaluation.sample_solutions(
      graphdef, state, jnp.asarray(questions), jnp.asarray(qlen), keys,
      sampler_config=sampler_config, num_samples=num_samples,
      max_depth=max_depth, score=False))
  traces, solved = [], 0
  for q, problem in enumerate(problems):
    kept = set()
    for r in range(q * num_samples, (q + 1) * num_samples):
      row = out.tokens[r, :out.lengths[r]].tolist()
      if (len(kept) < traces_per_question and tuple(row) not in kept
          and task.is_correct(tokenizer.decode(row), problem.reference)):
        kept.add(tuple(row))
        traces.append((row, int(qlen[q])))
    solved += bool(kept)
  return traces, solved, int(np.sum(out.policy_tokens))


def policy_traces(kept, found, history: str) -> list[tuple[list[int], int]]:
  """D_G for policy SFT once an iteration `found` its `(row, prompt length)`
  traces: those alone (`history="iteration"`), or appended to the `kept`
  ones of earlier iterations, each distinct trace once (`"all"`: a puzzle
  drawn again may yield the same solution)."""
  if history == "iteration":
    return list(found)
  out, seen = list(kept), {(tuple(row), n) for row, n in kept}
  for row, n in found:
    if (tuple(row), n) not in seen:
      seen.add((tuple(row), n))
      out.append((row, n))
  return out


def schedule(iterations: int) -> list[tuple[str, int]]:
  """The run's phases as `(name, iteration)`; a checkpoint's step is its
  phase's index here, so adding iterations keeps earlier steps valid."""
  phases = [("warmstart", 0), ("eval", 0)]
  for i in range(1, iterations + 1):
    phases += [("collect", i), ("train", i), ("eval", i)]
  return phases


# --- variable-size data carried between phases -------------------------------


def _pad_rows(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  width = max((len(r) for r in rows), default=1)
  tokens = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens, np.array([len(r) for r in rows], np.int32)


def _unpad_rows(tokens, lengths) -> list[list[int]]:
  return [row[:n].tolist() for row, n in zip(tokens, lengths)]


@dataclasses.dataclass
class Buffers:
  """D_V (value rows and targets, accumulated over iterations) and D_G (SFT
  rows and their prompt lengths: this iteration's, or all distinct ones so
  far with `train.trace_history="all"`)."""

  value_rows: list[list[int]] = dataclasses.field(default_factory=list)
  value_targets: list[float] = dataclasses.field(default_factory=list)
  traces: list[tuple[list[int], int]] = dataclasses.field(
      default_factory=list)

  def to_arrays(self, keep_empty: bool = False) -> dict[str, np.ndarray]:
    """Arrays for the checkpoint (empty parts left out unless `keep_empty`:
    orbax refuses zero-size items)."""
    out = {}
    if self.value_rows or keep_empty:
      tokens, lengths = _pad_rows(self.value_rows)
      out.update(value_tokens=tokens, value_lengths=lengths,
                 value_targets=np.asarray(self.value_targets, np.float32))
    if self.traces or keep_empty:
      tokens, lengths = _pad_rows([t for t, _ in self.traces])
      out.update(trace_tokens=tokens, trace_lengths=lengths,
                 trace_prompt_len=np.array([p for _, p in self.traces],
                                           np.int32))
    return out

  @classmethod
  def from_arrays(cls, arrays: dict) -> "Buffers":
    out = cls()
    if "value_tokens" in arrays:
      out.value_rows = _unpad_rows(arrays["value_tokens"],
                                   arrays["value_lengths"])
      out.value_targets = [float(t) for t in arrays["value_targets"]]
    if "trace_tokens" in arrays:
      rows = _unpad_rows(arrays["trace_tokens"], arrays["trace_lengths"])
      out.traces = list(zip(rows, map(int, arrays["trace_prompt_len"])))
    return out


# --- outputs ------------------------------------------------------------------


class Outputs:
  """What a run writes besides checkpoints, all derived from the checkpoint's
  metrics so a resumed run rewrites them consistently:

    metrics.jsonl   one row per iteration (0 = warm start)
    eval.jsonl      every (iteration, method, budget) evaluation
    plots/accuracy_per_iteration.png, plots/accuracy_vs_budget.png
    trees/iteration_<i>/{search,eval}_<q>.html
    tensorboard/    TensorBoard event files

  The workdir may be a URL (gs://...): files go through `etils.epath`, and
  TensorBoard events are written to a local folder and copied after each
  flush.
  """

  def __init__(self, workdir: epath.Path, *, enabled: bool):
    self.workdir = workdir
    self.enabled = enabled  # only process 0 writes
    self._writer = None
    self._events = None  # local folder of the events of a URL workdir

  def publish(self, meta: dict, new_row: dict | None,
              resumed: bool = False) -> None:
    """Rewrites the files from `meta`; adds `new_row` to TensorBoard, or
    when `resumed` every row, in an events file that tells TensorBoard to
    drop the earlier files' steps (a run killed between its checkpoint and
    its events lost that row; rewritten, no step shows twice)."""
    if not self.enabled:
      return
    paths.write_atomic(self.workdir / "metrics.jsonl", "".join(
        json.dumps(m) + "\n" for m in meta["metrics"]))
    paths.write_atomic(self.workdir / "eval.jsonl", "".join(
        json.dumps(r) + "\n" for r in meta["evaluations"]))
    if not meta["metrics"]:
      return
    plots.accuracy_per_iteration(
        meta["metrics"], self.workdir / "plots" / "accuracy_per_iteration.png")
    last = meta["metrics"][-1]["iteration"]
    curve = [r for r in meta["evaluations"] if r["iteration"] == last]
    plots.accuracy_vs_budget(
        curve, self.workdir / "plots" / "accuracy_vs_budget.png",
        title=f"Accuracy vs token budget, iteration {last}")
    for row in meta["metrics"] if resumed else filter(None, [new_row]):
      self._tensorboard(row, purge=resumed)

  def _tensorboard(self, row: dict, purge: bool = False) -> None:
    if self._writer is None:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      folder = self.workdir / "tensorboard"
      if paths.is_url(self.workdir):
        self._events = tempfile.TemporaryDirectory()
        folder = self._events.name
      # purge_step: TensorBoard hides earlier files' events from step 0 on.
      self._writer = tensorboardX.SummaryWriter(
          str(folder), purge_step=0 if purge else None)
    for key, value in row.items():
      if isinstance(value, (int, float)) and key != "iteration":
        self._writer.add_scalar(key, value, row["iteration"])
    self._writer.flush()
    if self._events is not None:
      target = self.workdir / "tensorboard"
      target.mkdir(parents=True, exist_ok=True)
      for local in pathlib.Path(self._events.name).iterdir():
        (target / local.name).write_bytes(local.read_bytes())

  def trees(self, iteration: int, kind: str, result, decode,
            count: int) -> None:
    """HTML pages of the first `count` trees of a `SearchResult`."""
    if not self.enabled or result is None:
      return
    folder = self.workdir / "trees" / f"iteration_{iteration}"
    folder.mkdir(parents=True, exist_ok=True)
    for q in range(min(count, result.tree.batch_size)):
      page = views.tree_to_html(
          result.tree, q, answer_node=int(result.answer_node[q]),
          rollout_steps=views.answer_rollout_steps(result, q, decode),
          decode=decode, title=f"{kind} tree {q}, iteration {iteration}")
      paths.write_atomic(folder / f"{kind}_{q}.html", page)

  def close(self):
    if self._writer is not None:
      self._writer.close()
    if self._events is not None:
      self._events.cleanup()


class StopOnSignal:
  """Records SIGTERM (preemption notice) and SIGINT so the loop can stop at
  the next phase boundary after saving; a second signal acts as usual."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    signal.signal(signum, self._previous[signum])  # the next one is final
    logging.warning("%s: stopping after the current phase",
                    self.requested)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# --- the loop -----------------------------------------------------------------


class Loop:
  """The phases of one run; state is `{"policy", "value"}` parameters."""

  def __init__(self, config, workdir: epath.Path,
               checkpoints: checkpoint.Checkpointer):
    if config.mode not in MODES:
      raise ValueError(f"config.mode={config.mode!r}: choose from {MODES}")
    if config.train.trace_history not in TRACE_HISTORIES:
      raise ValueError(f"config.train.trace_history="
                       f"{config.train.trace_history!r}: choose from "
                       f"{TRACE_HISTORIES}")
    if config.train.value_loss not in training_steps.VALUE_LOSSES:
      raise ValueError(f"config.train.value_loss={config.train.value_loss!r}:"
                       f" choose from {tuple(training_steps.VALUE_LOSSES)}")
    share = config.train.value_tree_share
    if share is not None and not 0 <= share <= 1:
      raise ValueError(f"config.train.value_tree_share={share}: a share "
                       "between 0 and 1, or unset")
    self.value_loss = training_steps.VALUE_LOSSES[config.train.value_loss]
    self.config = config
    self.workdir = workdir
    self.task = registry.get_task(config.task)
    self.data = experiment.load_data(config)
    self.mesh = distributed.mesh(config.mesh.fsdp, config.mesh.tensor)
    self.group = distributed.search_group(self.mesh)
    experiment.check_batch_split(
        config, self.mesh.shape["data"] * self.mesh.shape["fsdp"])
    if distributed.is_main():  # trains the tokenizer if the workdir has none
      experiment.tokenizer_for(config, workdir, self.data)
    distributed.barrier("tokenizer")
    self.tokenizer = experiment.tokenizer_for(config, workdir, self.data)
    if checkpoints.latest_step() is not None:
      experiment.check_checkpoint_vocab(checkpoints, self.tokenizer, workdir)
    # Every process checks every question now: a too-long one found later
    # would stop one process while the others wait in a collective.
    for split in ("train", "test"):
      for i, p in enumerate(getattr(self.data, split)):
        n = len(self.tokenizer.encode(p.question))
        if n > config.question_width:
          raise ValueError(
              f"{split} problem {i} has {n} tokens, more than "
              f"config.question_width={config.question_width}: "
              f"{p.question[:60]!r}")
    policy, value_model = experiment.models_for(config, self.tokenizer)
    self.policy_graph, policy_params = nnx.split(policy)
    self.value_graph, value_params = nnx.split(value_model)
    # Parameters live on the mesh as global arrays, sharded by their logical
    # axes (replicated when fsdp = tensor = 1).
    with self.rules():
      self.shardings = dict(
          policy=nnx.get_named_sharding(policy_params, self.mesh),
          value=nnx.get_named_sharding(value_params, self.mesh))
    distributed.check_divisible(
        dict(policy=policy_params, value=value_params), self.shardings)
    self.initial_state = distributed.to_global(
        dict(policy=policy_params, value=value_params), self.shardings)
    self.sampler_config = experiment.sampler_config_for(config,
                                                        self.tokenizer)
    self.search_config = experiment.search_config_for(config)
    self.eval_context = experiment.eval_context(config, self.tokenizer)
    self.eval_methods = experiment.parse_methods(config.eval.methods)
    self.eval_budgets = experiment.parse_budgets(config.eval.budgets)
    self.length_buckets = experiment.length_buckets(config)
    self.outputs = Outputs(workdir, enabled=distributed.is_main())
    self._train_steps = {}  # see `_train`

  def rules(self):
    """The logical-axis rules of the `(data, fsdp, tensor)` mesh."""
    return nnx.logical_axis_rules(sharding.complete_rules(
        sharding.DEFAULT_RULES))

  def models(self, state):
    """`(policy, value_model)` on this process's search devices."""
    return (nnx.merge(self.policy_graph,
                      distributed.to_search(state["policy"], self.mesh)),
            nnx.merge(self.value_graph,
                      distributed.to_search(state["value"], self.mesh)))

  def _gather(self, arrays):
    """Every search group's rows, each group's once, on every process."""
    return distributed.allgather_rows(arrays, include=self.group.leader)

  def _bar(self, total, desc):
    return tqdm.tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                     disable=not (self.config.progress and
                                  distributed.is_main()))

  def _train(self, graph, params, loss_fn, batches, num_steps: int,
             learning_rate: float, what: str):
    """`num_steps` AdamW steps (fresh optimizer, warm-up + cosine) cycling
    over `batches`, data-parallel over every device of every process;
    returns this process's copy of the parameters and the mean loss.

    Raises:
      FloatingPointError: on a non-finite loss, naming the phase and step;
        nothing is saved, so the last checkpoint stays as it was.
    """
    optimizer = optim.OptimizerConfig.for_phase(learning_rate, num_steps)
    tx = optim.make_optimizer(optimizer)
    with self.rules():  # parameters as laid out, batch over data x fsdp
      state = training_steps.init_state(params, tx)
      shardings = (training_steps.state_shardings(state, tx, self.mesh),
                   training_steps.batch_shardings(batches[0], self.mesh))
      batches = [distributed.to_global(b, shardings[1])
                 for b in batches[:num_steps]]  # only those the steps use
    state = distributed.to_global(state, shardings[0])
    # The schedule's numbers live in the optimizer state (`optim`): one
    # jitted step per model, loss, layout and the rest of the optimizer's
    # settings serves every call, and later calls skip tracing it again
    # (seconds per length bucket at 0.5B).
    schedule_free = dataclasses.replace(optimizer, learning_rate=0.0,
                                        warmup_steps=0, total_steps=0)
    key = (graph, loss_fn, schedule_free, jax.tree.structure(shardings),
           tuple(jax.tree.leaves(shardings)))
    if key not in self._train_steps:
      self._train_steps[key] = training_steps.make_train_step(
          graph, loss_fn, tx, shardings=shardings)
    step = self._train_steps[key]
    losses = []
    with self._bar(num_steps, what) as bar:
      for i in range(num_steps):
        state, metrics = step(state, batches[i % len(batches)])
        losses.append(float(metrics["loss"]))
        if not np.isfinite(losses[-1]):
          raise FloatingPointError(
              f"{what}: loss is {losses[-1]} at step {i + 1}/{num_steps} "
              f"(learning rate {learning_rate}); the last checkpoint in "
              f"{self.workdir / 'checkpoints'} is intact")
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return state.params, float(np.mean(losses)) if losses else float("nan")

  def _train_value(self, params, rows, targets, batch_size: int,
                   num_steps: int, learning_rate: float, seed: int,
                   what: str):
    """`_train` of the value model with the configured loss on the records
    `rows` (token ids) and `targets`, batched by length."""
    batches = list(batching.value_batches(
        rows, np.asarray(targets), batch_size, buckets=self.length_buckets,
        seed=seed))
    return self._train(self.value_graph, params, self.value_loss, batches,
                       num_steps, learning_rate, what)

  # -- phases: (state, buffers, meta, iteration) -> (state, buffers) -----------

  @functools.cached_property
  def warmstart_examples(self) -> list[tuple[list[int], int]]:
    """D_0 as SFT examples `(prompt + solution ids, prompt length)`: the warm
    start trains on them, and policy SFT replays some."""
    return [(self.tokenizer.encode(text), len(self.tokenizer.encode(prompt)))
            for prompt, text in self.data.warmstart]

  @functools.cached_property
  def initial_value_records(
      self) -> tuple[list[list[int]], list[float], list[int]]:
    """`D_V0`: value records inferred from the warm-start solutions, and
    their depths (the same every time: the data is regenerated from the
    seed, not checkpointed)."""
    start = time.perf_counter()
    records = experiment.initial_value_records(self.config, self.data,
                                               self.tokenizer)
    logging.info("D_V0: %d value records in %.1f s", len(records[0]),
                 time.perf_counter() - start)
    return records

  def warmstart(self, state, buffers, meta, iteration):
    """SFT of the policy on D_0; the value model on `D_V0` (Algorithm 1,
    line 1)."""
    del iteration
    c = self.config.warmstart
    if c.steps and self.warmstart_examples:
      batches = list(batching.sft_batches(self.warmstart_examples,
                                          c.batch_size,
                                          buckets=self.length_buckets,
                                          seed=self.config.seed))
      state["policy"], loss = self._train(
          self.policy_graph, state["policy"], training_steps.sft_loss,
          batches, c.steps, c.learning_rate, "warm start")
      logging.info("warm start: %d SFT steps, loss %.3f", c.steps, loss)
      meta["current"]["warmstart_loss"] = loss
      # The process reward model starts from the policy's weights: now the
      # warm-started ones (copies: each train step donates its parameters).
      state["value"]["backbone"] = jax.tree.map(jnp.copy, state["policy"])
    rows, targets, depths = self.initial_value_records
    if c.value_steps and rows:
      state["value"], loss = self._train_value(
          state["value"], rows, targets, c.batch_size, c.value_steps,
          c.learning_rate, self.config.seed, "value warm start")
      logging.info("value warm start: %d steps on %d records, loss %.4f",
                   c.value_steps, len(rows), loss)
      meta["current"].update(warmstart_value_loss=loss,
                             initial_value_records=len(rows))
    if c.value_first_steps and rows:
      # Then a mix in which first steps make `value_first_step_share` of the
      # records: in D_V0 as it is V ranks them little better than chance.
      picks = batching.first_step_mix(depths, c.value_first_step_share,
                                      self.config.seed)
      state["value"], loss = self._train_value(
          state["value"], [rows[i] for i in picks],
          np.asarray(targets)[picks], c.batch_size, c.value_first_steps,
          c.learning_rate, self.config.seed + 1,
          "value warm start, first steps")
      logging.info("value warm start on first steps: %d steps, loss %.4f",
                   c.value_first_steps, loss)
      meta["current"].update(warmstart_first_step_value_loss=loss)
    return state, buffers

  def collect(self, state, buffers, meta, iteration):
    """Searches (or samples) this process's share of the iteration's
    training questions, then gathers everyone's D_V rows and D_G traces."""
    config = self.config
    problems = iteration_problems(config, self.data.train, iteration)
    mine = self.group.shard(len(problems))
    graphdef, search_state = nnx.split(self.models(state))
    base_key = jax.random.fold_in(jax.random.key(config.seed), iteration)
    solved = tokens_used = 0
    value_rows, value_targets, traces = [], [], []
    desc = f"{'search' if config.mode == 'rest_mcts' else 'sample'} " \
           f"iteration {iteration}"
    with self._bar(mine.stop - mine.start, desc) as bar:
      for lo in range(mine.start, mine.stop, config.search_batch):
        hi = min(lo + config.search_batch, mine.stop)
        chunk = problems[lo:hi]
        questions, qlen = evaluation.encode_rows(
            self.tokenizer, [p.question for p in chunk], config.question_width)
        # One key per question: its draws do not depend on the batching.
        keys = evaluation.problem_keys(base_key, range(lo, hi))
        if config.mode == "rest_mcts":
          result, correct, records, found = search_labelled(
              graphdef, search_state, chunk, questions, qlen, keys,
              task=self.task, decode=self.tokenizer.decode,
              sampler_config=self.sampler_config,
              search_config=self.search_config, config=config)
          value_rows += _unpad_rows(records.tokens, records.lengths)
          value_targets += list(records.target)
          traces += [(row[:n].tolist(), int(q)) for row, n, q in zip(
              found.tokens, found.lengths, found.question_len)]
          solved += int(correct.any(axis=1).sum())
          tokens_used += int(np.sum(result.policy_tokens))
          if lo == 0:
            self.outputs.trees(iteration, "search", result,
                               self.tokenizer.decode,
                               config.trees_per_iteration)
        else:
          found, hits, used = sample_correct(
              graphdef, search_state, chunk, questions, qlen, keys,
              task=self.task, tokenizer=self.tokenizer,
              sampler_config=self.sampler_config,
              num_samples=config.rest_em.num_samples,
              max_depth=config.max_depth,
              traces_per_question=config.train.traces_per_question)
          traces += found
          solved += hits
          tokens_used += used
        bar.update(len(chunk))
    gathered = Buffers.from_arrays(self._gather(Buffers(
        value_rows, value_targets, traces).to_arrays(keep_empty=True)))
    counts = self._gather(
        dict(counts=np.array([[solved, tokens_used]], np.int32)))["counts"]
    solved, tokens_used = counts.sum(axis=0).tolist()
    buffers.value_rows += gathered.value_rows  # D_V accumulates
    buffers.value_targets += gathered.value_targets
    buffers.traces = policy_traces(buffers.traces, gathered.traces,
                                   config.train.trace_history)
    meta["current"].update(
        search_solved=solved / len(problems),
        search_policy_tokens=tokens_used / len(problems),
        value_records=len(buffers.value_rows),
        traces=len(gathered.traces), policy_traces=len(buffers.traces))
    return state, buffers

  def _policy_examples(self, traces, seed: int, train_config
                       ) -> list[tuple[list[int], int]]:
    """D_G's traces, repeated, and warm-start examples making `train.replay`
    of the `policy_steps x batch_size` examples of policy SFT: a few verified
    traces alone are memorized, and the policy unlearns the legal moves of
    D_0 around them (it starts to claim 24 with wrong arithmetic).
    `train_config`: the `config.train` settings."""
    total = train_config.policy_steps * train_config.batch_size
    warm = self.warmstart_examples
    count = round(train_config.replay * total) if warm else 0
    picks = np.random.default_rng(seed).choice(len(warm), count)
    replay = [warm[i] for i in picks]
    slots = total - count
    if len(traces) > slots:  # a random subset, not the first ones gathered
      keep = np.random.default_rng([seed, 2]).choice(len(traces), slots,
                                                     replace=False)
      return [traces[i] for i in np.sort(keep)] + replay
    repeats = -(-slots // len(traces))  # ceil
    return (traces * repeats)[:slots] + replay

  def _value_examples(self, buffers, seed: int, train_config
                      ) -> tuple[list[list[int]], list[float]]:
    """D_V_i with the earlier data, D_V0 included: all of it, or, with
    `train.value_tree_share` set, `value_steps x batch_size` records of
    which that share are the trees' (repeated as needed) and the rest drawn
    from D_V0. Uniformly over the union, a few hundred tree records beside
    D_V0's ~10^5 are a percent of what value training sees."""
    rows, targets, _ = self.initial_value_records
    share = train_config.value_tree_share
    if share is None or not rows:
      return rows + buffers.value_rows, targets + buffers.value_targets
    total = train_config.value_steps * train_config.batch_size
    count = round(share * total)
    rng, size = np.random.default_rng(seed), len(buffers.value_rows)
    tree = np.concatenate([np.zeros(0, int)] + [
        rng.permutation(size) for _ in range(-(-count // size))])[:count]
    initial = np.random.default_rng(seed + 1).choice(len(rows), total - count)
    return ([buffers.value_rows[i] for i in tree] + [rows[i] for i in initial],
            [buffers.value_targets[i] for i in tree]
            + [targets[i] for i in initial])

  def train(self, state, buffers, meta, iteration, train_config=None):
    """Value training on D_V (ReST-MCTS*) and policy SFT on D_G, with
    `config.train` or `train_config` in its place."""
    if train_config is None:
      train_config = self.config.train
    seed = int(np.random.default_rng([self.config.seed, iteration]).integers(
        1 << 30))
    value_loss = policy_loss = None
    if self.config.mode == "rest_mcts" and buffers.value_rows:
      rows, targets = self._value_examples(buffers, seed, train_config)
      state["value"], value_loss = self._train_value(
          state["value"], rows, targets, train_config.batch_size,
          train_config.value_steps, train_config.learning_rate, seed,
          f"value training, iteration {iteration}")
    if buffers.traces:
      batches = list(batching.sft_batches(
          self._policy_examples(buffers.traces, seed, train_config),
          train_config.batch_size,
          buckets=self.length_buckets, seed=seed + 1))
      state["policy"], policy_loss = self._train(
          self.policy_graph, state["policy"], training_steps.sft_loss,
          batches, train_config.policy_steps, train_config.learning_rate,
          f"policy SFT, iteration {iteration}")
    if train_config.trace_history == "iteration":
      buffers.traces = []
    meta["current"].update(value_loss=value_loss, policy_loss=policy_loss)
    return state, buffers

  def eval(self, state, buffers, meta, iteration):
    config = self.config
    models = self.models(state)
    final = iteration == config.iterations
    budgets = sorted(set(self.eval_budgets) if final
                     else {config.eval.budget})
    if config.eval.budget not in budgets:
      budgets.append(config.eval.budget)
    runs = sum(1 if m == "greedy" else len(budgets)
               for m in self.eval_methods)
    mine = self.group.shard(len(self.data.test))
    with self._bar(runs, f"evaluation, iteration {iteration}") as bar:
      results, search = evaluation.evaluate(
          models, self.eval_context, self.data.test[mine],
          methods=self.eval_methods, budgets=budgets,
          seed=config.seed + 7919 * iteration,  # as evaluate --checkpoint
          indices=range(mine.start, mine.stop),
          gather=self._gather,
          progress=lambda *_: bar.update())
    self.outputs.trees(iteration, "eval", search, self.tokenizer.decode,
                       config.trees_per_iteration)
    row = dict(iteration=iteration, **meta["current"])
    sampled = []  # (correct, total) of the methods that sample solutions
    for r in results:
      meta["evaluations"].append(dict(iteration=iteration, **r.row()))
      if r.samples == (1 if r.method == "greedy" else config.eval.budget):
        row[f"accuracy_{r.method}"] = r.accuracy
        row[f"tokens_{r.method}"] = r.policy_tokens
        if r.sample_accuracy is not None:
          row[f"sample_accuracy_{r.method}"] = r.sample_accuracy
          counts = r.per_problem["correct_samples"]
          sampled.append((int(np.sum(counts)), r.samples * len(counts)))
    if sampled:
      # The policy's pass@1 at its sampling temperature over every solution
      # the sampling methods drew (SC and Best-of-N: budget per problem
      # each): the least noisy measure of the policy itself.
      row["sample_accuracy"] = (sum(c for c, _ in sampled) /
                                sum(t for _, t in sampled))
    meta["metrics"].append(row)
    meta["current"] = {}
    return state, buffers


def _phase_at(phases: list[tuple[str, int]], index: int,
              iterations: int) -> tuple[str, int]:
  """`(name, iteration)` of phase `index`; `("end", iterations)` past the
  last (a run resumed with fewer iterations, or a finished one)."""
  return phases[index] if index < len(phases) else ("end", iterations)


def run(config, workdir,
        on_phase: Callable[[str, int, float, dict], None] | None = None):
  """Runs (or resumes) Algorithm 1 as configured and returns the metrics
  rows, a list of dicts (also in `workdir/metrics.jsonl`), iteration 0 being
  the warm start.

  `on_phase(name, iteration, seconds, metrics)` is called after each phase
  that runs (before its checkpoint is written), e.g. by `bench/loop.py`;
  `metrics` holds the iteration's metric values so far (its whole row after
  the evaluation), so a run cut off mid-iteration still reports them.
  """
  workdir = experiment.workdir_path(workdir)
  if distributed.is_main():
    workdir.mkdir(parents=True, exist_ok=True)
    experiment.write_config(config, workdir)
  distributed.barrier("config")
  experiment.check_config(config, workdir)
  checkpoints = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=2)
  loop = Loop(config, workdir, checkpoints)
  phases = schedule(config.iterations)
  state, buffers = loop.initial_state, Buffers()
  meta = dict(phase=-1, metrics=[], evaluations=[], current={},
              vocab_size=loop.tokenizer.vocab_size)
  # Process 0's view decides, so all processes resume from the same phase.
  latest = checkpoints.latest_step()
  latest = distributed.broadcast(-1 if latest is None else latest)
  if latest >= 0:
    state, arrays, meta = checkpoints.restore(
        checkpoint.abstract_like(state, loop.shardings), step=latest)
    buffers = Buffers.from_arrays(arrays)
    name, iteration = _phase_at(phases, meta["phase"], config.iterations)
    logging.info("resumed after phase %s of iteration %d from %s", name,
                 iteration, checkpoints.directory)
    loop.outputs.publish(meta, None, resumed=True)  # the last run may have
    # died before it
  if distributed.is_main():
    name, iteration = _phase_at(phases, meta["phase"] + 1, config.iterations)
    experiment.update_config(config, workdir,
                             f"{name} of iteration {iteration}")
  # Checked against the checkpoints above where they record one (those
  # written before fingerprints were checked by size only); recorded now.
  meta["tokenizer_fingerprint"] = loop.tokenizer.fingerprint()
  try:
    with StopOnSignal() as stop:
      for index in range(meta["phase"] + 1, len(phases)):
        name, iteration = phases[index]
        rows_before = len(meta["metrics"])
        start = time.perf_counter()
        state, buffers = getattr(loop, name)(state, buffers, meta, iteration)
        seconds = time.perf_counter() - start
        logging.info("phase %s of iteration %d took %.1f s", name, iteration,
                     seconds)
        new_row = (meta["metrics"][-1] if len(meta["metrics"]) > rows_before
                   else None)
        if on_phase is not None:
          on_phase(name, iteration, seconds,
                   dict(meta["current"] if new_row is None else new_row))
        meta["phase"] = index
        # Global arrays: orbax writes each shard once, from its process.
        checkpoints.save(index, state, buffers.to_arrays(), meta)
        loop.outputs.publish(meta, new_row)
        if new_row is not None:
          logging.info("iteration %d: %s", iteration, new_row)
        stop_now = distributed.any_process(stop.requested is not None)
        if stop_now and index + 1 < len(phases):
          logging.warning("%s: saved after phase %s of iteration %d; rerun "
                          "the same command to continue",
                          stop.requested or "stop requested on another "
                          "process", name, iteration)
          break
  finally:
    loop.outputs.close()
    checkpoints.close()
  return meta["metrics"]
