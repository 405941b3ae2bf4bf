"""Reasoning baselines at a known token cost (SPEC "Baselines").

  * CoT            — one greedy solution (`sample_solutions`, temperature 0);
  * Self-Consistency@N — N sampled solutions; the majority answer wins (the
                     vote is on extracted answers, on the host: `majority_vote`);
  * Best-of-N      — N sampled solutions; the value model picks one;
  * ToT-BFS        — a beam of k partial solutions; each step expands every
                     unfinished beam by b samples and keeps the k best by value.
Each returns the policy tokens generated and the value tokens scored per
question, the budget figures MCTS* reports too, so methods compare at equal
tokens. Everything is batched over questions (and samples) under `jit`, with
the same `PolicyFn` / `ValueFn` interface as `mcts_star`.
"""

import collections
from collections.abc import Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from restmcts_jax.search import mcts_star

Array = jax.Array


@struct.dataclass
class Solutions:
  """Solutions of B questions, N each (row `b * N + j`).

  Attributes:
    tokens: `[B * N, Q + D * S]` question + steps, right-padded.
    lengths: `[B * N]`.
    finished: `[B * N]` the last step is final.
    score: `[B * N]` value-model score of the full solution (0 if unscored).
    policy_tokens: `[B]` generated tokens, all samples together.
    value_tokens: `[B]` tokens scored by the value model.
  """

  tokens: Array
  lengths: Array
  finished: Array
  score: Array
  policy_tokens: Array
  value_tokens: Array


def _step_keys(keys: Array, depth, count: int) -> Array:
  """`[B * count]` keys for one depth of every question."""
  split = lambda k: jax.random.split(jax.random.fold_in(k, depth), count)
  return jax.vmap(split)(keys).reshape(-1)


def _append_where(prefix, lengths, proposals, mask):
  """Appends each proposed step where `mask`; `prefix [R, L]` has room."""
  rows, new_len = mcts_star.append_steps(prefix, lengths, proposals.tokens,
                                         proposals.lengths)
  return (jnp.where(mask[:, None], rows, prefix),
          jnp.where(mask, new_len, lengths))


def _buffer(question_tokens, question_len, copies, max_depth, max_step_len):
  """Each question repeated `copies` times in a buffer with room for
  `max_depth` steps."""
  width = question_tokens.shape[1] + max_depth * max_step_len
  pad = width - question_tokens.shape[1]
  buf = jnp.pad(question_tokens, ((0, 0), (0, pad)))
  return jnp.repeat(buf, copies, 0), jnp.repeat(question_len, copies)


def sample_solutions(
    policy_fn: mcts_star.PolicyFn,
    question_tokens: Array,
    question_len: Array,
    keys: Array,
    *,
    num_samples: int,
    max_depth: int,
    max_step_len: int,
) -> Solutions:
  """N whole solutions per question, one step per batched policy call.

  A row stops at a final step or after `max_depth` steps. With a greedy
  policy and `num_samples=1` this is CoT; sampled, it feeds Self-Consistency
  and Best-of-N.
  """
  b = question_tokens.shape[0]
  prefix, lengths = _buffer(question_tokens, question_len, num_samples,
                            max_depth, max_step_len)

  def step(depth, carry):
    prefix, lengths, finished, tokens = carry
    proposals = policy_fn(prefix, lengths, _step_keys(keys, depth, num_samples),
                          1)
    active = ~finished
    prefix, lengths = _append_where(prefix, lengths, proposals, active)
    tokens += jnp.where(active, proposals.lengths, 0)
    return prefix, lengths, finished | (active & proposals.is_final), tokens

  rows = b * num_samples
  init = (prefix, lengths, jnp.zeros((rows,), bool), jnp.zeros((rows,),
                                                                jnp.int32))
  prefix, lengths, finished, tokens = jax.lax.fori_loop(0, max_depth, step,
                                                        init)
  zeros = jnp.zeros((b,), jnp.int32)
  return Solutions(tokens=prefix, lengths=lengths, finished=finished,
                   score=jnp.zeros((rows,), jnp.float32),
                   policy_tokens=tokens.reshape(b, -1).sum(1),
                   value_tokens=zeros)


def score_solutions(score_fn: Callable[[Array, Array], Array],
                    solutions: Solutions, num_samples: int) -> Solutions:
  """Scores every solution with `score_fn(tokens, lengths)`, e.g. a
  `ValueModel` (for Best-of-N)."""
  score = score_fn(solutions.tokens, solutions.lengths)
  scored = solutions.lengths.reshape(-1, num_samples).sum(1)
  return solutions.replace(score=score,
                           value_tokens=solutions.value_tokens + scored)


def best_of_n(solutions: Solutions, num_samples: int) -> Array:
  """`[B]` row index of each question's best solution: finished before
  unfinished, then by value-model score."""
  score = jnp.where(solutions.finished, solutions.score, solutions.score - 2.0)
  pick = jnp.argmax(score.reshape(-1, num_samples), axis=1)
  return jnp.arange(pick.shape[0]) * num_samples + pick


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
  """Self-Consistency: the most common non-None answer (first on ties)."""
  counts = collections.Counter(a for a in answers if a is not None)
  return counts.most_common(1)[0][0] if counts else None


def tot_bfs(
    policy_fn: mcts_star.PolicyFn,
    value_fn: mcts_star.ValueFn,
    question_tokens: Array,
    question_len: Array,
    keys: Array,
    *,
    beam_width: int,
    branch: int,
    max_depth: int,
    max_step_len: int,
) -> tuple[Solutions, Array]:
  """Tree-of-Thought breadth-first search with a value-model beam.

  Every depth, each unfinished beam entry proposes `branch` steps; all
  candidates (and the finished entries, as they are) are scored by the value
  model and the `beam_width` best are kept.

  Returns:
    The final beams as `Solutions` (`B * beam_width` rows, `score` = value)
    and `[B]` the row of each question's answer: the best finished entry, or
    the best entry if none finished.
  """
  b, k, n = question_tokens.shape[0], beam_width, branch
  prefix, lengths = _buffer(question_tokens, question_len, k, max_depth,
                            max_step_len)
  # Only the first beam entry starts alive, so the root is expanded once.
  alive = jnp.tile(jnp.arange(k) == 0, b)

  def step(depth, carry):
    prefix, lengths, finished, score, alive, p_tok, v_tok = carry
    proposals = policy_fn(prefix, lengths, _step_keys(keys, depth, k * n), n)
    expand = jnp.repeat(alive & ~finished, n)
    cand, cand_len = _append_where(jnp.repeat(prefix, n, 0),
                                   jnp.repeat(lengths, n), proposals, expand)
    cand_score = value_fn(prefix, lengths, proposals.tokens, proposals.lengths,
                          n)
    # A finished entry stays a candidate as itself (its first copy only).
    first_copy = jnp.tile(jnp.arange(n) == 0, b * k)
    keep_old = jnp.repeat(alive & finished, n) & first_copy
    cand_score = jnp.where(expand, cand_score,
                           jnp.where(keep_old, jnp.repeat(score, n), -jnp.inf))
    cand_final = jnp.where(expand, proposals.is_final,
                           jnp.repeat(finished, n))
    top_score, top = jax.lax.top_k(cand_score.reshape(b, k * n), k)
    rows = (jnp.arange(b)[:, None] * k * n + top).reshape(-1)
    p_tok += (proposals.lengths * expand).reshape(b, -1).sum(1)
    v_tok += (cand_len * expand).reshape(b, -1).sum(1)
    return (cand[rows], cand_len[rows], cand_final[rows],
            top_score.reshape(-1), jnp.isfinite(top_score.reshape(-1)),
            p_tok, v_tok)

  zeros = jnp.zeros((b,), jnp.int32)
  init = (prefix, lengths, jnp.zeros((b * k,), bool),
          jnp.zeros((b * k,), jnp.float32), alive, zeros, zeros)
  prefix, lengths, finished, score, alive, p_tok, v_tok = jax.lax.fori_loop(
      0, max_depth, step, init)
  beams = Solutions(tokens=prefix, lengths=lengths, finished=finished,
                    score=jnp.where(alive, score, 0.0), policy_tokens=p_tok,
                    value_tokens=v_tok)
  rank = jnp.where(alive, score, -jnp.inf) + jnp.where(finished, 2.0, 0.0)
  answer = jnp.arange(b) * k + jnp.argmax(rank.reshape(b, k), axis=1)
  return beams, answer
