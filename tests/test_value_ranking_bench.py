"""bench/value_ranking.py: its AUC against hand-counted pairs, and the exact
truth of the random positions it scores."""

import importlib.util
import pathlib

import numpy as np
from hypothesis import given, settings, strategies as st

from restmcts_jax.tasks import game24

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_value_ranking", ROOT / "bench" / "value_ranking.py")
ranking = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ranking)


def test_auc_counts_pairs_and_half_ties():
  scores = np.array([0.9, 0.5, 0.5, 0.1, 0.3])
  positive = np.array([True, True, False, False, True])
  # Pairs (winnable, lost): 0.9 beats 0.5 and 0.1; 0.5 ties 0.5, beats 0.1;
  # 0.3 loses to 0.5, beats 0.1: (2 + 1.5 + 1) / 6.
  assert ranking.auc(scores, positive) == 4.5 / 6
  assert ranking.auc(scores, np.ones(5, bool)) != ranking.auc(
      scores, np.ones(5, bool))  # nan: one class only


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=30), st.data())
def test_auc_matches_the_pair_count(scores, data):
  positive = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores),
                                         max_size=len(scores))))
  scores = np.array(scores)
  pos, neg = scores[positive], scores[~positive]
  if not len(pos) or not len(neg):
    return
  pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
  assert np.isclose(ranking.auc(scores, positive), np.mean(pairs))


def test_sampled_solutions_give_every_step_prefix_exactly_labelled():
  question = game24.question_text((4, 9, 10, 13))
  won = ["9 + 10 = 19 (left: 4 13 19)", "19 - 13 = 6 (left: 4 6)",
         "4 * 6 = 24 (left: 24)", "Answer: 4 * (9 + 10 - 13) = 24"]
  wrong_sum = ["4 + 9 = 14 (left: 10 13 14)", "Answer: 4 + 9 + 10 + 13 = 24"]
  positions = ranking.solution_prefixes(
      [question + "\n".join(won) + "\n", question + "\n".join(wrong_sum)],
      max_depth=4)
  assert positions.texts[1] == question + won[0] + "\n" + won[1] + "\n"
  assert positions.texts[5] == question + "".join(s + "\n" for s in wrong_sum)
  np.testing.assert_array_equal(positions.depth, [1, 2, 3, 4, 1, 2])
  np.testing.assert_array_equal(positions.winnable,
                                [True] * 4 + [False] * 2)


def test_random_positions_are_labelled_exactly():
  puzzles = game24.splits().validation[:5]
  positions = ranking.random_positions(puzzles, per_puzzle=3, seed=0)
  assert len(positions.texts) == 5 * 3 * 4  # 3 moves + the Answer line
  np.testing.assert_array_equal(positions.depth, [1, 2, 3, 4] * 15)
  for text, depth, won in zip(positions.texts, positions.depth,
                              positions.winnable):
    question, *steps = text.rstrip("\n").split("\n")
    numbers = [int(n) for n in question.split()[1:5]]
    assert len(steps) == depth
    if depth == 4:
      assert won == game24.verify(numbers, text)
      continue
    left = numbers
    for step in steps:
      left = game24.check_step(left, step)
    assert won == game24.is_solvable(left)
  # The first move keeps a solvable puzzle solvable only sometimes.
  assert 0 < positions.winnable[positions.depth == 1].mean() < 1

