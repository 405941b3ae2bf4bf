"""The batched JAX MCTS* replays the plain-Python transcription of SPEC.md
(`tests/mcts_reference.py`) node for node: same trees, visits, values and
token counts after every iteration, for several questions and settings."""

import functools

import jax
import numpy as np
import pytest

from restmcts_jax.search import mcts_star
from tests import mcts_reference
from tests import toy_models

QUESTIONS = [[1, 2], [3, 4, 5], [17], [40, 2, 9, 11]]

SETTINGS = {
    # name: (config, iteration counts after which to compare)
    "defaults_no_gate": (dict(branch=3, roll_branch=2, roll_forward_steps=2,
                              max_depth=6, stop_at_end_gate=False),
                         [1, 2, 3, 4, 5, 6]),
    "merging_b6_gate": (dict(branch=6, roll_branch=1, roll_forward_steps=3,
                             max_depth=4, end_gate=0.9), [3, 8]),
    "datagen": (dict(branch=2, roll_branch=3, roll_forward_steps=1,
                     exploration=0.5, unvisited_bonus=0.9, end_gate=0.8,
                     max_depth=3, stop_at_end_gate=False), [10]),
    "deep_rollouts_d6": (dict(branch=2, roll_branch=6, roll_forward_steps=4,
                              alpha=0.3, max_depth=5, end_gate=0.95), [7]),
    "no_rollouts": (dict(branch=2, roll_forward_steps=0, exploration=0.1,
                         unvisited_bonus=0.0, max_depth=4,
                         stop_at_end_gate=False), [1, 2, 5, 9]),
    "rollout_answers": (dict(branch=2, roll_branch=2, roll_forward_steps=3,
                             max_depth=3, stop_at_end_gate=False,
                             rollout_answers=True), [1, 2, 4, 8]),
    "rollout_answers_gate": (dict(branch=3, roll_branch=1,
                                  roll_forward_steps=4, max_depth=4,
                                  end_gate=0.9, rollout_answers=True), [6]),
}


@functools.partial(jax.jit, static_argnames="config")
def _search(questions, lengths, keys, config):
  return mcts_star.search(toy_models.MODELS,
                          questions, lengths, keys, config)


def _reference_config(c: mcts_star.MCTSConfig):
  return dict(b=c.branch, d=c.roll_branch, m=c.roll_forward_steps,
              c=c.exploration, alpha=c.alpha, inf=c.unvisited_bonus,
              end_gate=c.end_gate, stop_at_end_gate=c.stop_at_end_gate,
              max_depth=c.max_depth, score_merged=True,
              rollout_answers=c.rollout_answers)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_jax_search_matches_the_reference_after_every_iteration(name):
  overrides, checkpoints = SETTINGS[name]
  width = max(map(len, QUESTIONS))
  q = np.zeros((len(QUESTIONS), width), np.int32)
  for i, row in enumerate(QUESTIONS):
    q[i, :len(row)] = row
  ql = np.array([len(r) for r in QUESTIONS])
  keys = jax.random.split(jax.random.key(0), len(QUESTIONS))
  for iterations in checkpoints:
    # The reference breaks ties by slot order.
    config = mcts_star.MCTSConfig(num_iterations=iterations,
                                  max_step_len=toy_models.MAX_STEP_LEN,
                                  random_ties=False, **overrides)
    out = jax.tree.map(np.asarray, _search(q, ql, keys, config))
    t = out.tree
    for b, question in enumerate(QUESTIONS):
      ref = mcts_reference.run_reference(question, _reference_config(config),
                                         iterations)
      where = f"{name}, question {b}, after {iterations} iterations"
      n = len(ref["parent"])
      assert t.num_nodes[b] == n, where
      np.testing.assert_array_equal(t.parent[b, :n], ref["parent"], where)
      np.testing.assert_array_equal(t.depth[b, :n], ref["depth"], where)
      np.testing.assert_array_equal(t.visits[b, :n], ref["visits"], where)
      np.testing.assert_array_equal(t.final[b, :n], ref["final"], where)
      np.testing.assert_allclose(t.value[b, :n], ref["value"], atol=1e-6,
                                 err_msg=where)
      np.testing.assert_allclose(t.prior_value[b, :n], ref["prior_value"],
                                 atol=1e-6, err_msg=where)
      for node in range(n):
        step = ref["step"][node]
        assert list(t.step_tokens[b, node, :t.step_len[b, node]]) == step
        kids = [k for k in t.children[b, node] if k >= 0]
        assert kids == ref["children"][node], where
      assert out.answer_node[b] == ref["answer_node"], where
      assert out.passed_gate[b] == ref["stopped_at_gate"], where
      assert out.iterations[b] == ref["iterations_run"], where
      assert out.policy_tokens[b] == ref["policy_tokens"], where
      assert out.value_tokens[b] == ref["value_tokens"], where
      assert out.answer_is_rollout[b] == ref["answer_is_rollout"], where
      rollout = jax.tree.map(lambda x, b=b: x[b], out.best_rollout)
      if ref["best_rollout"] is None:
        assert rollout.value == -1.0, where
        continue
      node, steps, value = ref["best_rollout"]
      assert rollout.node == node, where
      np.testing.assert_allclose(rollout.value, value, atol=1e-6,
                                 err_msg=where)
      taken = [list(rollout.steps[i, :n])
               for i, n in enumerate(rollout.step_lengths) if n]
      assert taken == steps, where
