"""D_V records and D_G trace selection from finished toy-search trees."""

import jax
import numpy as np

from restmcts_jax.rewards import traces as traces_lib
from restmcts_jax.rewards import value_targets
from restmcts_jax.search import mcts_star
from tests import toy_models

MAX_DEPTH = 4


def _trees():
  config = mcts_star.MCTSConfig(num_iterations=12, branch=3, roll_branch=1,
                                roll_forward_steps=1, max_depth=MAX_DEPTH,
                                max_step_len=toy_models.MAX_STEP_LEN,
                                stop_at_end_gate=False)
  q = np.array([[1, 2, 0], [3, 4, 5], [17, 0, 0]], np.int32)
  result = jax.jit(lambda: mcts_star.search(
      toy_models.MODELS, q, np.array([2, 3, 1]),
      jax.random.split(jax.random.key(0), 3), config))()
  return jax.device_get(result.tree)


def _prefix(tree, b, node):
  steps = []
  while node > 0:
    steps = list(tree.step_tokens[b, node, :tree.step_len[b, node]]) + steps
    node = tree.parent[b, node]
  return list(tree.question_tokens[b, :tree.question_len[b]]) + steps


def _correct(tree):
  """Every other final node (by id) is called correct."""
  final_ids = np.cumsum(tree.final, axis=1)
  return tree.final & (final_ids % 2 == 1)


def test_value_records_hold_each_labelled_node_with_its_target():
  tree = _trees()
  correct = _correct(tree)
  targets = jax.device_get(value_targets.infer_value_targets(
      tree, correct, max_depth=MAX_DEPTH))
  assert targets.labelled.any()
  records = value_targets.value_records(tree, targets, max_depth=MAX_DEPTH)
  where = np.argwhere(targets.labelled)
  assert len(records.target) == len(where)
  for r, (b, node) in enumerate(where):
    assert records.question[r] == b
    assert list(records.tokens[r, :records.lengths[r]]) == _prefix(tree, b, node)
    assert records.target[r] == targets.v[b, node]
    assert records.depth[r] == tree.depth[b, node] >= 1
    assert not records.tokens[r, records.lengths[r]:].any()


def test_traces_are_correct_finished_deduplicated_and_best_first():
  tree = _trees()
  correct = _correct(tree)
  traces = traces_lib.select_traces(tree, correct, max_depth=MAX_DEPTH,
                                    top_k=2, min_reward=0.0)
  assert len(traces.reward) > 0
  expected = {}
  for b, node in np.argwhere(correct):
    path, n = [], node
    while n > 0:
      path.append(tree.prior_value[b, n])
      n = tree.parent[b, n]
    expected.setdefault(b, []).append((np.mean(path), _prefix(tree, b, node)))
  for b in range(3):
    rows = np.flatnonzero(traces.question == b)
    want = sorted(expected.get(b, []), key=lambda x: -x[0])
    unique = []
    for reward, seq in want:
      if seq not in [s for _, s in unique]:
        unique.append((reward, seq))
    assert len(rows) == min(2, len(unique))
    for r, (reward, seq) in zip(rows, unique):
      np.testing.assert_allclose(traces.reward[r], reward, rtol=1e-5)
      assert list(traces.tokens[r, :traces.lengths[r]]) == seq
      assert traces.question_len[r] == tree.question_len[b]
  # A reward floor above every trace keeps nothing.
  none = traces_lib.select_traces(tree, correct, max_depth=MAX_DEPTH,
                                  min_reward=1.01)
  assert len(none.reward) == 0
