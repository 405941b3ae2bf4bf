"""`D_G`: verified traces for policy fine-tuning (SPEC "Traces for the policy").

Unfinished branches are pruned and finished solutions whose answer is correct
are kept, ranked by their process reward: the mean value-model score of their
steps (the inferred value target of a correct final node is always 1, so it
cannot rank). Duplicates are dropped and the best `top_k` of each question are
returned, provided their reward reaches `min_reward`.
"""

import numpy as np
from flax import struct

from restmcts_jax.search import tree as tree_lib


@struct.dataclass
class Traces:
  """Selected traces.

  Attributes:
    tokens: `[R, L]` question + solution steps, right-padded.
    lengths: `[R]`.
    question_len: `[R]` where the solution starts in each row.
    reward: `[R]` inferred process reward of the trace.
    question: `[R]` which question (row of the tree batch).
  """

  tokens: np.ndarray
  lengths: np.ndarray
  question_len: np.ndarray
  reward: np.ndarray
  question: np.ndarray


def path_mean_prior(tree: tree_lib.Tree, *, max_depth: int) -> np.ndarray:
  """`[B, N]` mean value-model score over the steps of each node's root path:
  the process reward of the trace ending there."""
  paths = np.asarray(tree_lib.root_paths(tree, max_depth))[:, :, 1:]
  prior = np.asarray(tree.prior_value)
  on_path = paths >= 0
  scores = np.take_along_axis(prior[:, None, :].repeat(paths.shape[1], 1),
                              np.maximum(paths, 0), axis=2)
  return (scores * on_path).sum(-1) / np.maximum(on_path.sum(-1), 1)


def select_traces(
    tree: tree_lib.Tree,
    correct,
    *,
    max_depth: int,
    top_k: int = 1,
    min_reward: float = 0.2,
) -> Traces:
  """The best correct finished traces of each question (host side).

  Args:
    tree: B finished trees.
    correct: `[B, N]` whether each final node's answer is correct.
    max_depth: deepest node the trees can hold.
    top_k: traces kept per question.
    min_reward: smallest process reward kept (the reference keeps value-model
      scores >= 0.2).
  """
  keep = np.asarray(tree.final) & np.asarray(correct) & np.asarray(tree.used)
  reward = path_mean_prior(tree, max_depth=max_depth)[keep]
  tokens, lengths, question = tree_lib.prefix_rows(tree, keep,
                                                   max_depth=max_depth)
  order = np.lexsort((-reward, question))  # by question, best first
  kept, seen, per_question = [], set(), {}
  for i in order:
    q = int(question[i])
    text = (q, tokens[i, :lengths[i]].tobytes())
    if reward[i] < min_reward or text in seen or per_question.get(q, 0) >= top_k:
      continue
    seen.add(text)
    per_question[q] = per_question.get(q, 0) + 1
    kept.append(i)
  kept = np.asarray(kept, np.int64)
  return Traces(tokens=tokens[kept], lengths=lengths[kept],
                question_len=np.asarray(tree.question_len)[question[kept]],
                reward=reward[kept], question=question[kept])
