"""Math-Shepherd labels: share of rollouts reaching a correct answer."""

import jax
import jax.numpy as jnp
import numpy as np

from restmcts_jax.rewards import math_shepherd
from restmcts_jax.search import mcts_star
from tests import mcts_reference as ref
from tests import toy_models


def _random_step_policy(prefix, lengths, keys, k):
  """Proposes step [t] with t uniform in 1..5 per row key; 5 is final."""
  t = jax.vmap(lambda key: jax.random.randint(key, (), 1, 6))(keys)
  tokens = jnp.stack([t, jnp.zeros_like(t)], 1).astype(jnp.int32)
  return mcts_star.Proposals(tokens=tokens, lengths=jnp.ones_like(t),
                             is_final=t == 5)


def test_deterministic_policy_gives_all_or_nothing_labels():
  # Unfinished within 5 steps; finished wrong; finished correct (twice).
  prefixes = [[1, 2], [3, 4, 5], [3, 2, 5], [8]]
  q = np.zeros((4, 3), np.int32)
  for i, p in enumerate(prefixes):
    q[i, :len(p)] = p
  is_correct = lambda seq: ref.toy_hash(seq) % 2 == 0
  labels = math_shepherd.math_shepherd_labels(
      toy_models.policy_fn, jnp.asarray(q), jnp.array([2, 3, 3, 1]),
      jax.random.split(jax.random.key(0), 4), is_correct, num_rollouts=4,
      max_depth=5, max_step_len=2)
  np.testing.assert_array_equal(labels.soft, [0.0, 0.0, 1.0, 1.0])
  for i, p in enumerate(prefixes):
    seq, finished = list(p), False
    for _ in range(5):
      step, final = ref.toy_proposal(seq, 0)
      seq += step
      if final:
        finished = True
        break
    want = finished and is_correct(seq)
    assert labels.soft[i] == float(want) and labels.hard[i] == want


def test_soft_label_estimates_the_chance_of_reaching_a_correct_answer():
  # One step to go: the rollout finishes iff it draws 5 (chance 1/5) within
  # max_depth=1 step; every finished rollout is correct.
  labels = math_shepherd.math_shepherd_labels(
      _random_step_policy, jnp.array([[1, 2]]), jnp.array([2]),
      jax.random.key(0)[None], lambda seq: True, num_rollouts=2000,
      max_depth=1, max_step_len=2)
  assert abs(labels.soft[0] - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 2000)
  assert labels.hard[0]
