"""Baselines: whole solutions, Best-of-N, majority vote and ToT-BFS, checked
against plain-Python loops over the toy model, with their token counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from restmcts_jax import evaluation
from restmcts_jax import sampling
from restmcts_jax.search import baselines
from restmcts_jax.search import mcts_star
from tests import mcts_reference as ref
from tests import toy_models
from tests.test_transformer import _model

QUESTIONS = [[1, 2], [3, 4, 5], [17], [40, 2, 9, 11]]
S = toy_models.MAX_STEP_LEN


def _questions():
  q = np.zeros((len(QUESTIONS), 4), np.int32)
  for i, row in enumerate(QUESTIONS):
    q[i, :len(row)] = row
  return jnp.array(q), jnp.array([len(r) for r in QUESTIONS])


def _keys():
  return jax.random.split(jax.random.key(0), len(QUESTIONS))


def test_sample_solutions_follow_the_policy_until_a_final_step():
  q, ql = _questions()
  out = jax.jit(functools.partial(
      baselines.sample_solutions, toy_models.policy_fn, num_samples=2,
      max_depth=6, max_step_len=S))(q, ql, _keys())
  for b, question in enumerate(QUESTIONS):
    seq, tokens, finished = list(question), 0, False
    for _ in range(6):
      step, final = ref.toy_proposal(seq, 0)
      seq += step
      tokens += len(step)
      if final:
        finished = True
        break
    for j in range(2):  # the toy ignores the keys: both samples agree
      row = b * 2 + j
      assert list(np.asarray(out.tokens[row, :out.lengths[row]])) == seq
      assert bool(out.finished[row]) == finished
    assert int(out.policy_tokens[b]) == 2 * tokens


def test_best_of_n_prefers_finished_solutions_then_the_highest_score():
  sols = baselines.Solutions(
      tokens=jnp.zeros((6, 1), jnp.int32), lengths=jnp.array([3, 4, 5, 1, 2, 3]),
      finished=jnp.array([True, False, True, False, False, False]),
      score=jnp.array([0.2, 0.9, 0.5, 0.1, 0.7, 0.3]),
      policy_tokens=jnp.zeros(2, jnp.int32), value_tokens=jnp.zeros(2, jnp.int32))
  np.testing.assert_array_equal(baselines.best_of_n(sols, 3), [2, 4])
  scored = baselines.score_solutions(lambda t, l: l / 10.0, sols, 3)
  np.testing.assert_allclose(scored.score, [0.3, 0.4, 0.5, 0.1, 0.2, 0.3])
  np.testing.assert_array_equal(scored.value_tokens, [12, 6])


def test_majority_vote():
  assert baselines.majority_vote(["24", None, "12", "24"]) == "24"
  assert baselines.majority_vote(["3", "4"]) == "3"
  assert baselines.majority_vote([None, None]) is None


def _reference_bfs(question, beam_width, branch, max_depth):
  """ToT-BFS written plainly: beams of (prefix, finished, value)."""
  beams = [(list(question), False, 0.0)]
  p_tok = v_tok = 0
  for _ in range(max_depth):
    cands = []
    for prefix, finished, value in beams:
      if finished:
        cands.append((prefix, True, value))
        continue
      for j in range(branch):
        step, final = ref.toy_proposal(prefix, j)
        new = prefix + step
        p_tok += len(step)
        v_tok += len(new)
        cands.append((new, final, float(ref.toy_value(new))))
    order = sorted(range(len(cands)), key=lambda i: (-cands[i][2], i))
    beams = [cands[i] for i in order[:beam_width]]
  best = max(range(len(beams)),
             key=lambda i: (beams[i][1], beams[i][2], -i))
  return beams, best, p_tok, v_tok


def test_tot_bfs_matches_a_plain_python_beam_search():
  q, ql = _questions()
  beams, answer = jax.jit(functools.partial(
      baselines.tot_bfs, toy_models.policy_fn, toy_models.value_fn,
      beam_width=2, branch=3, max_depth=4, max_step_len=S))(q, ql, _keys())
  for b, question in enumerate(QUESTIONS):
    want, best, p_tok, v_tok = _reference_bfs(question, 2, 3, 4)
    for j, (prefix, finished, value) in enumerate(want):
      row = b * 2 + j
      assert list(np.asarray(beams.tokens[row, :beams.lengths[row]])) == prefix
      assert bool(beams.finished[row]) == finished
      np.testing.assert_allclose(beams.score[row], value, atol=1e-6)
    assert int(answer[b]) == b * 2 + best
    assert int(beams.policy_tokens[b]) == p_tok
    assert int(beams.value_tokens[b]) == v_tok


def test_greedy_cot_with_a_language_model_equals_repeated_greedy_steps():
  model = _model()
  config = sampling.SamplerConfig(max_step_len=4, temperature=0.0,
                                  stop_token_ids=(5, 9, 17), eos_token_id=2)
  policy_fn = mcts_star.lm_policy_fn(model, config)
  q = jnp.array([[3, 4, 10], [11, 12, 0]])
  ql = jnp.array([3, 2])
  out = jax.jit(functools.partial(
      baselines.sample_solutions, policy_fn, num_samples=1, max_depth=3,
      max_step_len=4))(q, ql, jax.random.split(jax.random.key(0), 2))
  graphdef, state = nnx.split(model)
  for b in range(2):
    seq = list(np.asarray(q[b, :ql[b]]))
    for _ in range(3):
      step = sampling.sample_step(graphdef, state, jnp.array([seq]),
                                  jnp.array([len(seq)]),
                                  jax.random.split(jax.random.key(1), 1), config)
      seq += list(np.asarray(step.tokens[0, :step.lengths[0]]))
      if bool(step.is_final[0]):
        break
    assert list(np.asarray(out.tokens[b, :out.lengths[b]])) == seq


@pytest.mark.parametrize("beam, branch, max_depth", [
    (1, 2, 4), (2, 2, 4), (5, 2, 4), (8, 2, 4), (3, 3, 3), (4, 1, 5)])
def test_tot_bfs_samples_the_steps_its_budget_counts_on(beam, branch,
                                                        max_depth):
  """`evaluation.tot_beam` sizes the beam by `tot_search_steps`: what
  `tot_bfs` samples when no entry finishes early (one-token steps here)."""
  def never_finishing(prefix, lengths, keys, num_samples):
    proposals = toy_models.policy_fn(prefix, lengths, keys, num_samples)
    rows = proposals.lengths.shape[0]
    return proposals.replace(
        tokens=proposals.tokens.at[:, 1].set(0),
        lengths=jnp.ones((rows,), jnp.int32),
        is_final=jnp.zeros((rows,), bool))
  q, ql = _questions()
  beams, _ = baselines.tot_bfs(
      never_finishing, toy_models.value_fn, q, ql, _keys(), beam_width=beam,
      branch=branch, max_depth=max_depth, max_step_len=S)
  np.testing.assert_array_equal(
      beams.policy_tokens,
      evaluation.tot_search_steps(beam, branch, max_depth))
