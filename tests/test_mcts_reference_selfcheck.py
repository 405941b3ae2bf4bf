"""Hand-checked numbers for the plain-Python MCTS* reference (`mcts_reference`).

Every expected number below was worked out by hand from the toy model in the
reference's docstring (integer hashes, value = k / 1009) and the MCTS* rules,
so these tests pin the reference itself before it is used to check the JAX
search. Values are written as `_v(k)` = float32(k) / float32(1009).
"""

import numpy as np
import pytest

from tests.mcts_reference import run_reference, toy_hash, toy_proposal
from tests.mcts_reference import toy_value

F32 = np.float32
HALF = F32(0.5)

# b=2, d=2, m=1 on question [1, 2], no gate stop.
TINY = dict(b=2, d=2, m=1, c=0.7, alpha=0.5, inf=1.0, end_gate=0.9,
            stop_at_end_gate=False, max_depth=4, num_iterations=3)


def _v(k):
  """The toy value k / 1009 in float32."""
  return F32(k) / F32(1009)


def _blend(v, v_max):
  """(1 - alpha) v + alpha v_max with alpha = 0.5, in float32."""
  return (F32(1.0) - HALF) * v + HALF * v_max


def test_toy_model_by_hand():
  # h([1, 2]) = ((7 * 31 + 1) * 31 + 2) % 10007 = 6760.
  assert toy_hash([1, 2]) == 6760
  assert toy_hash([]) == 7
  # t_j = 1 + ((6760 * 17 + 131 j + 965) % 5) = 1 + (j % 5).
  steps = [toy_proposal([1, 2], j) for j in range(6)]
  assert steps == [([1], False), ([2, 2], False), ([3], False),
                   ([4, 4], False), ([5], True), ([1], False)]
  # h([1, 2, 1]) = 9421; 9421 * 7919 % 1009 = 448.
  assert toy_value([1, 2, 1]) == _v(448)
  assert toy_value([1, 2, 2, 2]) == _v(781)


def test_one_iteration_b2_d2_m1():
  r = run_reference([1, 2], TINY, 1)
  assert r["parent"] == [-1, 0, 0]
  assert r["depth"] == [0, 1, 1]
  assert r["step"] == [[], [1], [2, 2]]
  assert r["children"] == [[1, 2], [], []]
  assert r["final"] == [False, False, False]
  assert r["prior_value"] == [0.0, _v(448), _v(781)]
  # C' = node 2 (781 > 448). Rollout from [1,2,2,2]: proposals [1] -> 923,
  # [2,2] -> 717; v_max = 923/1009; v = (781 + 923) / 2 / 1009 = 852/1009.
  blended = _blend(_v(781), _v(923))
  assert blended == pytest.approx(852 / 1009, abs=1e-6)
  assert r["visits"] == [1, 0, 1]
  assert r["value"] == [blended, _v(448), blended]  # root = its visited child
  assert r["answer_node"] == 2
  # policy: expansion 1 + 2, rollout 1 + 2; value: [1,2]+step -> 3 + 4,
  # rollout [1,2,2,2]+step -> 5 + 6.
  assert r["policy_tokens"] == 6
  assert r["value_tokens"] == 18
  assert r["iterations_run"] == 1
  assert r["stopped_at_gate"] is False


def test_three_iterations_b2_d2_m1():
  r = run_reference([1, 2], TINY, 3)
  # Iteration 2 selects unvisited node 1 (0.444 + inf beats 0.844 + 0) and
  # expands it: [3] -> 326, [4,4] -> 787. C' = node 4, rollout from
  # [1,2,1,4,4]: [2,2] -> 162, [3] -> 846.
  # Iteration 3: root n = 2, nodes 1 and 2 both n = 1 (same bonus), node 2
  # has the higher v (852 > 816.5) and is expanded: [1] -> 923, [2,2] -> 717.
  # C' = node 5, rollout from [1,2,2,2,1]: [2,2] -> 321, [3] -> 262.
  assert r["parent"] == [-1, 0, 0, 1, 1, 2, 2]
  assert r["depth"] == [0, 1, 1, 2, 2, 2, 2]
  assert r["step"] == [[], [1], [2, 2], [3], [4, 4], [1], [2, 2]]
  assert r["children"] == [[1, 2], [3, 4], [5, 6], [], [], [], []]
  assert r["visits"] == [3, 1, 2, 0, 1, 1, 0]
  v4 = _blend(_v(787), _v(846))
  v5 = _blend(_v(923), _v(321))
  root = (F32(0.0) + F32(1) * v4 + F32(2) * v5) / F32(3)
  assert r["value"] == [root, v4, v5, _v(326), v4, v5, _v(717)]
  assert r["value"][0] == pytest.approx((816.5 + 2 * 622) / 3 / 1009,
                                        abs=1e-6)
  assert r["prior_value"] == [0.0, _v(448), _v(781), _v(326), _v(787),
                              _v(923), _v(717)]
  # Nodes 1 and 4 tie on the highest v: the first id wins.
  assert r["answer_node"] == 1
  assert r["policy_tokens"] == 6 * 3
  assert r["value_tokens"] == 18 + (4 + 5 + 7 + 6) + (5 + 6 + 7 + 6)
  assert r["iterations_run"] == 3


def test_stop_at_end_gate():
  config = dict(TINY, end_gate=0.5, stop_at_end_gate=True)
  r = run_reference([1, 2], config, 10)
  # Iteration 2 selects node 1 (v 0.444 < 0.5) and expands it; iteration 3
  # selects node 2 (v 0.844 >= 0.5) and stops without touching the tree.
  assert r["stopped_at_gate"] is True
  assert r["iterations_run"] == 2
  assert r["answer_node"] == 2
  assert r["visits"] == [2, 1, 1, 0, 1]
  assert r["policy_tokens"] == 12
  assert r["value_tokens"] == 18 + 22


def test_max_depth_blocks_expansion():
  config = dict(TINY, max_depth=1)
  r = run_reference([1, 2], config, 2)
  # Iteration 2: node 1 (depth 1 = max_depth) is a leaf that is not expanded
  # and gets no rollout; back-prop only counts the visit.
  assert len(r["parent"]) == 3
  assert r["visits"] == [2, 1, 1]
  v2 = _blend(_v(781), _v(923))
  assert r["value"] == [(F32(0.0) + _v(448) + v2) / F32(2), _v(448), v2]
  assert r["policy_tokens"] == 6
  assert r["value_tokens"] == 18


def test_final_best_child_skips_rollout():
  # Question [1, 15]: proposals [4,4] -> 105 and [5] (final) -> 735.
  r = run_reference([1, 15], TINY, 1)
  assert r["step"] == [[], [4, 4], [5]]
  assert r["final"] == [False, False, True]
  assert r["visits"] == [1, 0, 1]
  assert r["value"] == [_v(735), _v(105), _v(735)]
  assert r["policy_tokens"] == 3
  assert r["value_tokens"] == 4 + 3
  # A final leaf is selected again later but never expanded.
  r = run_reference([1, 15], TINY, 3)
  assert r["children"][2] == []


def test_rollout_stops_at_final_step_and_keeps_max():
  config = dict(TINY, b=1, d=1, m=3)
  # Question [14]: child [1] -> 997. Rollout (d = 1, always j = 0): [3] -> 293,
  # then [5] (final) -> 318 and stop after 2 of the m = 3 steps.
  # v_max = 318/1009 < the prior: the blend lowers v.
  r = run_reference([14], config, 1)
  assert r["step"] == [[], [1]]
  assert r["value"][1] == _blend(_v(997), _v(318))
  assert r["value"][1] == pytest.approx(657.5 / 1009, abs=1e-6)
  assert r["policy_tokens"] == 1 + 1 + 1
  assert r["value_tokens"] == 2 + 3 + 4


def test_duplicate_proposals_are_merged():
  # b = 6 on [1, 2]: proposal 5 repeats proposal 0 ([1]) and is merged.
  config = dict(TINY, b=6)
  r = run_reference([1, 2], config, 1)
  assert r["step"][1:] == [[1], [2, 2], [3], [4, 4], [5]]
  assert r["children"][0] == [1, 2, 3, 4, 5]
  assert r["prior_value"][1:] == [_v(448), _v(781), _v(142), _v(70), _v(845)]
  # C' = the final [5] (845 is the highest): no rollout.
  assert r["visits"] == [1, 0, 0, 0, 0, 1]
  assert r["value"][0] == _v(845)
  assert r["policy_tokens"] == 1 + 2 + 1 + 2 + 1 + 1  # all six proposals
  assert r["value_tokens"] == 3 + 4 + 3 + 4 + 3  # the merged one not scored
  scored = run_reference([1, 2], dict(config, score_merged=True), 1)
  assert scored["value_tokens"] == r["value_tokens"] + 3
  assert scored["policy_tokens"] == r["policy_tokens"]
  assert scored["value"] == r["value"]


def test_rollout_v_max_is_the_best_seen():
  config = dict(TINY, b=1, d=1, m=2)
  # Question [1]: child [3] -> 801. Rollout: [3] -> 444, [4,4] -> 215;
  # v_max = 444 (not the last), v = (801 + 444) / 2 / 1009.
  r = run_reference([1], config, 1)
  assert r["step"] == [[], [3]]
  assert r["value"][1] == _blend(_v(801), _v(444))
  assert r["value"][1] == pytest.approx(622.5 / 1009, abs=1e-6)
  assert r["policy_tokens"] == 1 + 1 + 2
  assert r["value_tokens"] == 2 + 3 + 5


def test_without_rollouts_the_best_child_is_blended_toward_zero():
  # m = 0 (the training search's setting): no rollout step, so v_max keeps
  # its start, 0 (the reference's `low`), and C' takes its visit at half.
  config = dict(TINY, m=0)
  r = run_reference([1, 2], config, 1)
  v2 = _blend(_v(781), F32(0.0))
  assert r["visits"] == [1, 0, 1]
  assert r["value"] == [v2, _v(448), v2]
  assert r["policy_tokens"] == 3 and r["value_tokens"] == 3 + 4
  # Iteration 2 expands unvisited node 1 (448 + inf beats 390.5 + 0): [3] ->
  # 326, [4,4] -> 787; C' = node 4 at half, and node 1 takes its value.
  r = run_reference([1, 2], config, 2)
  v4 = _blend(_v(787), F32(0.0))
  assert r["children"][1] == [3, 4]
  assert r["visits"] == [2, 1, 1, 0, 1]
  assert r["value"][1:] == [v4, v2, _v(326), v4]
  assert r["value"][0] == (F32(0.0) + v4 + v2) / F32(2)


def test_ties_go_to_the_first_child():
  config = dict(TINY, b=3)
  # Question [55, 48]: [2,2] -> 139, [3] -> 437, [4,4] -> 437. C' is the
  # first of the tied pair (node 2); node 3 keeps its prior, unvisited.
  r = run_reference([55, 48], config, 1)
  assert r["step"] == [[], [2, 2], [3], [4, 4]]
  assert r["prior_value"][1:] == [_v(139), _v(437), _v(437)]
  assert r["visits"] == [1, 0, 1, 0]
  assert r["value"][3] == _v(437)
  assert r["value"][2] != _v(437)  # blended by the rollout
  # Iteration 2: unvisited node 3 (437 + inf) beats node 1 (139 + inf).
  r = run_reference([55, 48], config, 2)
  assert r["children"][1] == [] and r["children"][3] == [4, 5, 6]
  assert r["visits"][:4] == [2, 0, 1, 1]
