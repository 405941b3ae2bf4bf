"""`D_V0`: the initial value model's records (SPEC Algorithm 1, line 1).

The warm-start data holds, per training question, one or more whole
solutions (sampled traces or a reference solution). They are arranged as the
trees a search would have grown over them (solutions sharing their first
steps share nodes), the oracle marks each final answer, and the same
inference that labels search trees (SPEC Eq. 1–2, `value_targets`) turns
every labelled node into a `(Q, p_k, v_k)` record. So `V_0` learns what the
later rounds teach, from data the loop already has, and search, Best-of-N and
ToT have a meaningful value model from the first iteration on.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from restmcts_jax.rewards import value_targets
from restmcts_jax.search import tree as tree_lib


def split_steps(ids: Sequence[int], delimiter_ids: Sequence[int]
                ) -> list[list[int]]:
  """Token ids cut after every step delimiter (a trailing piece without one
  is a step too)."""
  steps, current = [], []
  for i in ids:
    current.append(i)
    if i in delimiter_ids:
      steps.append(current)
      current = []
  return steps + ([current] if current else [])


def solution_records(
    questions: Sequence[str],
    solutions: Sequence[Sequence[str]],
    references: Sequence[Any],
    *,
    encode: Callable[[str], list[int]],
    decode: Callable[[Sequence[int]], str],
    is_correct: Callable[[str, Any], bool],
    delimiter_ids: Sequence[int],
    question_width: int,
    max_step_len: int,
    max_depth: int,
    chunk: int = 128,
    bucket_shapes: bool = True,
) -> tuple[list[list[int]], list[float], list[int]]:
  """Value records of whole solutions, grouped by question.

  Args:
    questions: Q question texts (each ends with the step delimiter).
    solutions: per question, its solution texts (the steps after the
      question, one per line).
    references: per question, what `is_correct` checks against.
    encode, decode: the tokenizer.
    is_correct: the oracle, `(question + solution text, reference) -> bool`.
    delimiter_ids: token ids that end a step.
    question_width: most tokens of a question.
    max_step_len: most tokens of a step; solutions with a longer step, or
      with more than `max_depth` steps, are left out (search never makes
      them).
    max_depth: most steps of a solution.
    chunk: questions labelled per batched call (the last one padded with
      empty trees, so every call has the same batch size).
    bucket_shapes: round each call's node and child counts up to powers of
      two (`tree.from_paths`), so calls share compiled programs.

  Returns:
    `(rows, targets, depths)`: question + partial-solution token ids, `v_k`
    and `k`, one per labelled node, in question order.
  """
  rows, targets, depths = [], [], []
  delimiter_ids = frozenset(delimiter_ids)
  for lo in range(0, len(questions), chunk):
    q_tokens = np.zeros((chunk, question_width), np.int32)
    q_len = np.zeros((chunk,), np.int32)
    paths, correct_by_path = [], []
    for t, q in enumerate(range(lo, min(lo + chunk, len(questions)))):
      ids = encode(questions[q])
      if len(ids) > question_width:
        raise ValueError(f"question {q} has {len(ids)} tokens, more than "
                         f"question_width={question_width}")
      q_tokens[t, :len(ids)], q_len[t] = ids, len(ids)
      kept = {}
      for text in solutions[q]:
        steps = split_steps(encode(text), delimiter_ids)
        if (steps and len(steps) <= max_depth
            and max(map(len, steps)) <= max_step_len):
          key = tuple(map(tuple, steps))
          if key not in kept:
            kept[key] = is_correct(decode(ids + sum(steps, [])),
                                   references[q])
      paths.append(list(kept))
      correct_by_path.append(list(kept.values()))
    paths += [[]] * (chunk - len(paths))  # padding: no nodes, no records
    tree, ends = tree_lib.from_paths(q_tokens, q_len, paths,
                                     max_step_len=max_step_len,
                                     bucket_shapes=bucket_shapes)
    correct = np.zeros(tree.parent.shape, bool)
    for t, (nodes, flags) in enumerate(zip(ends, correct_by_path)):
      correct[t, nodes] = flags
    labels = jax.device_get(value_targets.infer_value_targets(
        tree, correct, max_depth=max_depth))
    records = value_targets.value_records(tree, labels, max_depth=max_depth)
    rows += [row[:n].tolist() for row, n in zip(records.tokens,
                                                records.lengths)]
    targets += np.asarray(records.target).tolist()
    depths += np.asarray(records.depth).tolist()
  return rows, targets, depths

