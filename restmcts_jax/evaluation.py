"""Held-out evaluation of the reasoning methods at equal token budgets.

Methods (SPEC "Baselines" and MCTS*):

  greedy  CoT: one greedy solution.
  sc      Self-Consistency@N: N sampled solutions, majority vote on answers.
  bon     Best-of-N: N sampled solutions, the value model picks one.
  tot     ToT-BFS: a beam of k partial solutions, b samples per entry and
          step, the value model keeps the k best; k makes the steps of a
          search that runs to max_depth nearest those of N solutions
          (`tot_beam`).
  mcts    MCTS*: the search stops once a question has generated N * L tokens.

A budget is given in CoT samples N and made a token budget through L, the
policy tokens of the greedy solution averaged over the questions; every method
reports the tokens it really spent, so curves are drawn against measured
tokens. The policy and the value model decide every answer; the verifier only
grades it.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from restmcts_jax import distributed
from restmcts_jax import sampling
from restmcts_jax.search import baselines
from restmcts_jax.search import mcts_star
from restmcts_jax.tasks import registry
from restmcts_jax.tokenizer import Tokenizer

METHODS = ("greedy", "sc", "bon", "tot", "mcts")


@dataclasses.dataclass(frozen=True)
class MethodResult:
  """One method at one budget on a set of problems.

  Attributes:
    method: one of METHODS.
    samples: the budget N in CoT samples (1 for greedy).
    accuracy: share of problems whose chosen solution the verifier accepts.
    policy_tokens: mean policy tokens generated per problem.
    value_tokens: mean tokens scored by the value model per problem.
    solutions: the chosen solution text per problem (this process's).
    per_problem: `correct`, `policy_tokens` and `value_tokens` arrays, one
      entry per problem; the means above are taken over them. Methods that
      sample N solutions (SC, Best-of-N) add `correct_samples`, how many of
      a problem's N the verifier accepts (see `sample_accuracy`).
  """

  method: str
  samples: int
  accuracy: float
  policy_tokens: float
  value_tokens: float
  solutions: tuple[str, ...]
  per_problem: dict = dataclasses.field(repr=False)

  @classmethod
  def from_problems(cls, method, samples, per_problem, solutions
                    ) -> "MethodResult":
    return cls(method, samples, float(np.mean(per_problem["correct"])),
               float(np.mean(per_problem["policy_tokens"])),
               float(np.mean(per_problem["value_tokens"])), tuple(solutions),
               per_problem)

  @property
  def sample_accuracy(self) -> float | None:
    """For SC and Best-of-N, the share of all sampled solutions that are
    correct: the policy's pass@1 at its sampling temperature, from N times
    more samples than one-per-problem accuracy (None for the other
    methods)."""
    if "correct_samples" not in self.per_problem:
      return None
    return float(np.mean(self.per_problem["correct_samples"]) / self.samples)

  def row(self) -> dict:
    """The numbers (a metrics row)."""
    row = dict(method=self.method, samples=self.samples,
               accuracy=self.accuracy, policy_tokens=self.policy_tokens,
               value_tokens=self.value_tokens)
    if self.sample_accuracy is not None:
      row["sample_accuracy"] = self.sample_accuracy
    return row


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What every method needs besides the models and the budget.

  Attributes:
    tokenizer: encodes questions, decodes solutions.
    task: extracts answers (SC) and grades solutions.
    sampler_config: how the policy samples a step (greedy uses temperature 0).
    search_config: MCTS* settings (`stop_at_end_gate`: answer with the
      first node past the end gate, or search the whole budget);
      `num_iterations` caps the search and the token budget is passed per
      budget.
    max_depth: steps per solution.
    question_width: tokens of a question row.
    tot_branch: b, samples per beam entry and step in ToT-BFS.
    batch_size: problems per batched call (0: all at once); the last batch
      is padded, so every batch reuses one compiled program.
    cache_nodes: MCTS* keeps every node's KV caches (False: re-encodes
      prefixes; for a value function that reads tokens, not a `ValueModel`).
  """

  tokenizer: Tokenizer
  task: registry.Task
  sampler_config: sampling.SamplerConfig
  search_config: mcts_star.MCTSConfig
  max_depth: int
  question_width: int
  tot_branch: int = 2
  batch_size: int = 0
  cache_nodes: bool = True


def encode_rows(tokenizer: Tokenizer, texts: Sequence[str], width: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded token rows `[R, width]` and lengths `[R]`.

  Raises:
    ValueError: naming the first text longer than `width` tokens.
  """
  tokens = np.zeros((len(texts), width), np.int32)
  lengths = np.zeros((len(texts),), np.int32)
  for i, text in enumerate(texts):
    ids = tokenizer.encode(text)
    if len(ids) > width:
      raise ValueError(f"text {i} has {len(ids)} tokens, more than {width} "
                       f"(question_width): {text[:60]!r}")
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return tokens, lengths


# --- jitted methods: (graphdef, state) = nnx.split((policy, value_model)) ----


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "sampler_config", "num_samples", "max_depth", "score"))
def sample_solutions(graphdef, state, tokens, lengths, keys, *,
                     sampler_config, num_samples, max_depth, score):
  """`baselines.sample_solutions` with the policy of `(policy, value_model)`,
  scored by the value model if `score` (Best-of-N)."""
  policy, value_model = nnx.merge(graphdef, state)
  solutions = baselines.sample_solutions(
      mcts_star.lm_policy_fn(policy, sampler_config), tokens, lengths, keys,
      num_samples=num_samples, max_depth=max_depth,
      max_step_len=sampler_config.max_step_len)
  if score:
    solutions = baselines.score_solutions(value_model, solutions, num_samples)
  return solutions


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "sampler_config", "beam_width", "branch", "max_depth"))
def _tot(graphdef, state, tokens, lengths, keys, *, sampler_config,
         beam_width, branch, max_depth):
  policy, value_model = nnx.merge(graphdef, state)
  return baselines.tot_bfs(
      mcts_star.lm_policy_fn(policy, sampler_config),
      value_model.score_continuations, tokens, lengths, keys,
      beam_width=beam_width, branch=branch, max_depth=max_depth,
      max_step_len=sampler_config.max_step_len)


def problem_keys(key: jax.Array, indices: Sequence[int]) -> jax.Array:
  """`[len(indices)]` keys, `fold_in(key, index)` each."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(
      jnp.asarray(indices, jnp.int32))


def _texts(tokenizer, tokens, lengths, rows) -> list[str]:
  return [tokenizer.decode(tokens[r, :lengths[r]].tolist()) for r in rows]


def _correct(context, problems, texts) -> np.ndarray:
  """`[len(texts)]` int32 verdicts; text `i` answers problem
  `i * len(problems) // len(texts)` (samples of a problem are adjacent)."""
  per = len(texts) // max(len(problems), 1)
  return np.asarray([context.task.is_correct(t, problems[i // per].reference)
                     for i, t in enumerate(texts)], np.int32)


def _result(method, samples, context, problems, texts, policy_tokens,
            value_tokens, correct_samples=None) -> MethodResult:
  # int32: exact through a multi-process gather (64-bit values travel as
  # 32-bit ones without jax_enable_x64).
  per_problem = dict(correct=_correct(context, problems, texts),
                     policy_tokens=np.asarray(policy_tokens, np.int32),
                     value_tokens=np.asarray(value_tokens, np.int32))
  if correct_samples is not None:
    per_problem["correct_samples"] = correct_samples
  return MethodResult.from_problems(method, samples, per_problem, texts)


def _first_equal(answers: list, same) -> list:
  """Each answer replaced by the first one `same` says it equals."""
  kinds, out = [], []
  for answer in answers:
    if answer is not None:
      kind = next((k for k in kinds if same(answer, k)), None)
      if kind is None:
        kinds.append(answer)
      else:
        answer = kind
    out.append(answer)
  return out


def _majority_texts(task, texts: list[str], num_samples: int) -> list[str]:
  """Per question, a sampled solution whose answer won the vote (the first
  sample if no solution has an answer), answers counted as one where
  `task.same_answer` says they are equal."""
  out = []
  for q in range(len(texts) // num_samples):
    group = texts[q * num_samples:(q + 1) * num_samples]
    answers = [task.extract_answer(t) for t in group]
    if task.same_answer is not None:
      answers = _first_equal(answers, task.same_answer)
    winner = baselines.majority_vote(answers)
    out.append(group[answers.index(winner)] if winner is not None else group[0])
  return out


def run_method(method: str, samples: int, models, context: EvalContext,
               problems: Sequence[registry.Problem], key: jax.Array, *,
               greedy_tokens: float, indices: Sequence[int] | None = None
               ) -> tuple[MethodResult, object]:
  """Runs one method on all `problems` at one budget, batched.

  Args:
    method: one of METHODS.
    samples: the budget N in CoT samples.
    models: `(policy, value_model)`.
    context: see `EvalContext`.
    problems: what to solve.
    key: PRNG key; problem `i` draws from `fold_in(key, indices[i])`.
    greedy_tokens: L, the greedy solution's mean policy tokens; MCTS*'s token
      budget is `samples * L`.
    indices: each problem's index in the whole evaluation set (default
      0, 1, ...), so a problem's draws do not depend on how the set is split
      across processes or batches.

  Returns:
    The result, and for MCTS* the `SearchResult` (None otherwise).
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
  tok = context.tokenizer
  tokens, lengths = encode_rows(tok, [p.question for p in problems],
                                context.question_width)
  tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
  if indices is None:
    indices = range(len(problems))
  keys = problem_keys(key, indices)
  graphdef, state = nnx.split(tuple(models))
  common = dict(max_depth=context.max_depth)
  if method in ("greedy", "sc", "bon"):
    n = 1 if method == "greedy" else samples
    config = context.sampler_config
    if method == "greedy":
      config = dataclasses.replace(config, temperature=0.0)
    out = distributed.fetch(sample_solutions(
        graphdef, state, tokens, lengths, keys, sampler_config=config,
        num_samples=n, score=method == "bon", **common))
    texts = _texts(tok, out.tokens, out.lengths, range(len(out.lengths)))
    correct_samples = None
    if method != "greedy":
      correct_samples = _correct(context, problems, texts).reshape(
          len(problems), n).sum(axis=1, dtype=np.int32)
    if method == "sc":
      texts = _majority_texts(context.task, texts, n)
    elif method == "bon":
      texts = _texts(tok, out.tokens, out.lengths,
                     jax.device_get(baselines.best_of_n(out, n)))
    return _result(method, n, context, problems, texts, out.policy_tokens,
                   out.value_tokens, correct_samples), None
  if method == "tot":
    beam = tot_beam(samples, context.tot_branch, context.max_depth)
    beams, answer = distributed.fetch(_tot(
        graphdef, state, tokens, lengths, keys,
        sampler_config=context.sampler_config, beam_width=beam,
        branch=context.tot_branch, **common))
    texts = _texts(tok, beams.tokens, beams.lengths, answer)
    return _result(method, samples, context, problems, texts,
                   beams.policy_tokens, beams.value_tokens), None
  # The budget is traced: one compiled search for every budget and iteration.
  search_config = dataclasses.replace(context.search_config, token_budget=0)
  result = distributed.fetch(mcts_star.search_lm(
      graphdef, state, tokens, lengths, keys, context.sampler_config,
      search_config, cache_nodes=context.cache_nodes,
      token_budget=max(1, round(samples * greedy_tokens))))
  rows, row_len = mcts_star.answer_rows(result, max_depth=context.max_depth)
  texts = _texts(tok, rows, row_len, range(len(problems)))
  return _result(method, samples, context, problems, texts,
                 result.policy_tokens, result.value_tokens), result


def tot_beam(samples: int, branch: int, max_depth: int) -> int:
  """ToT-BFS's beam width at a budget of `samples` CoT solutions: the `k`
  whose search, run to `max_depth`, samples nearest the `N D` steps of N
  solutions of D steps (the smaller on a tie). The root proposes `branch`
  steps and the beam fills as the candidates grow, so depth `d` samples
  `b min(k, b^(d-1))` steps (`tot_search_steps`). A beam of `N / b`, a common
  choice, spent 31% fewer tokens than Best-of-N at N = 8 on Game of 24.
  Exact where every solution takes `max_depth` steps (Game of 24); where
  solutions end sooner (GSM8K) the beam comes out larger than needed, and
  the tokens each method really spent are what the results report."""
  target = samples * max_depth
  widths = range(1, max(1, target) + 1)
  return min(widths, key=lambda k: (
      abs(tot_search_steps(k, branch, max_depth) - target), k))


def tot_search_steps(beam: int, branch: int, max_depth: int) -> int:
  """Steps ToT-BFS samples per question when no entry finishes early."""
  return sum(branch * min(beam, branch**depth) for depth in range(max_depth))


def _no_gather(arrays):
  return arrays


def evaluate(models, context: EvalContext,
             problems: Sequence[registry.Problem], *, methods: Sequence[str],
             budgets: Sequence[int], seed: int = 0,
             indices: Sequence[int] | None = None,
             gather: Callable[[dict], dict] = _no_gather,
             progress=None) -> tuple[list[MethodResult], object]:
  """Every method at every budget (greedy once), on the same problems.

  Args:
    models: `(policy, value_model)`.
    context: see `EvalContext`.
    problems: held-out problems (this process's share of them).
    methods: names from METHODS.
    budgets: budgets N in CoT samples.
    seed: evaluation seed; each (method, budget) gets its own key, the same
      whatever else is evaluated with it.
    indices: the problems' indices in the whole set (see `run_method`).
    gather: concatenates every process's per-problem arrays (e.g.
      `distributed.allgather_rows`), so the means, and the token length L
      behind MCTS*'s budget, are taken over all problems.
    progress: optional callable `(method, samples) -> None`, called after
      each run (e.g. a progress bar's update).

  Returns:
    The results in (method, budget) order, and the MCTS* `SearchResult` of
    the largest budget (None if MCTS* was not run), for tree views.
  """
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise ValueError(f"unknown evaluation methods {unknown}; known: {METHODS}")
  key = jax.random.key(seed)

  everyone = list(range(len(problems)) if indices is None else indices)
  step = context.batch_size or max(len(problems), 1)

  def run(method, samples, run_key, length):
    parts, search = [], None
    for lo in range(0, len(problems), step):
      chunk = list(range(lo, min(lo + step, len(problems))))
      padded = chunk + chunk[:1] * (step - len(chunk))
      result, tree = run_method(
          method, samples, models, context, [problems[i] for i in padded],
          run_key, greedy_tokens=length,
          indices=[everyone[i] for i in padded])
      parts.append(dict(solutions=result.solutions[:len(chunk)], **{
          k: v[:len(chunk)] for k, v in result.per_problem.items()}))
      search = tree if search is None else search  # the first batch's trees
    per_problem = {k: np.concatenate([p[k] for p in parts])
                   for k in parts[0] if k != "solutions"}
    solutions = [t for p in parts for t in p["solutions"]]
    return MethodResult.from_problems(
        method, result.samples, gather(per_problem), solutions), search

  def method_key(method, samples):
    return jax.random.fold_in(
        jax.random.fold_in(key, METHODS.index(method)), samples)

  greedy, _ = run("greedy", 1, method_key("greedy", 1), 0.0)
  if progress is not None:
    progress("greedy", 1)
  length = max(greedy.policy_tokens, 1.0)
  results, trees = [], None
  for method in methods:
    if method == "greedy":
      results.append(greedy)
      continue
    for samples in sorted(budgets):
      result, search = run(method, samples, method_key(method, samples),
                           length)
      if progress is not None:
        progress(method, samples)
      results.append(result)
      if search is not None:
        trees = search
  return results, trees
