"""Math-Shepherd process labels (for comparison with MCTS*-inferred ones).

For each partial solution `p_k`, N completions are sampled from the policy;
the soft label is the share that reach a correct answer, the hard label
whether any does. Sampling is one batched, jitted call for all prefixes and
rollouts; answers are checked on the host by the task's verifier.
"""

from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import struct

from restmcts_jax.search import baselines
from restmcts_jax.search import mcts_star


@struct.dataclass
class ShepherdLabels:
  """`soft [R]` share of correct rollouts and `hard [R]` any correct one."""

  soft: np.ndarray
  hard: np.ndarray


def math_shepherd_labels(
    policy_fn: mcts_star.PolicyFn,
    prefix_tokens: jax.Array,
    prefix_len: jax.Array,
    keys: jax.Array,
    is_correct: Callable[[Sequence[int]], bool],
    *,
    num_rollouts: int,
    max_depth: int,
    max_step_len: int,
) -> ShepherdLabels:
  """Monte-Carlo labels of R partial solutions.

  Args:
    policy_fn: proposes steps.
    prefix_tokens: `[R, L]` question + steps so far, right-padded.
    prefix_len: `[R]`.
    keys: `[R]` one PRNG key per prefix.
    is_correct: verifier of a whole solution's tokens (question included).
    num_rollouts: N completions per prefix.
    max_depth: most further steps of a completion.
    max_step_len: tokens per step.
  """
  sample = jax.jit(lambda p, l, k: baselines.sample_solutions(
      policy_fn, p, l, k, num_samples=num_rollouts, max_depth=max_depth,
      max_step_len=max_step_len))
  solutions = jax.device_get(sample(prefix_tokens, prefix_len, keys))
  correct = np.array([
      bool(done) and is_correct(row[:n].tolist())
      for row, n, done in zip(solutions.tokens, solutions.lengths,
                              solutions.finished)
  ]).reshape(-1, num_rollouts)
  return ShepherdLabels(soft=correct.mean(1), hard=correct.any(1))
