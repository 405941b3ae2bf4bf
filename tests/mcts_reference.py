"""Plain-Python MCTS* (`restmcts_jax.search.sequential`, one Python object
per node, ordinary loops, no JAX) driven by a deterministic toy model: the
reference for the batched, jit-compiled search in
`restmcts_jax.search.mcts_star`. The policy and the value model are integer
hash functions of the token prefix, so a JAX implementation (`toy_models`)
reproduces them exactly.

Toy model (all integers; the value in float32):
  prefix      = question tokens + the step tokens of every node on the root
                path (root first).
  hash        = h = 7; for x in prefix: h = (h * 31 + x) % 10007.
  proposal j  = t = 1 + ((h * 17 + j * 131 + h // 7) % 5); the step is [t] if
                t is odd else [t, t]; it is final iff t == 5.
  value       = float32((h * 7919) % 1009) / float32(1009).
Because 131 % 5 == 1, proposals j = 0..4 of one prefix are five distinct
steps; duplicates (and so merging) appear only from j = 5 on (b or d >= 6).

Float32 arithmetic (numpy scalars, evaluated in exactly this order):
  UCT (n_c > 0) = v_c + c * sqrt((2 * log(float32(n_parent))) / float32(n_c))
  UCT (n_c = 0) = v_c + inf
  blend         = (1 - alpha) * v + alpha * v_max
  back-prop     = (sum over children in slot order, sequentially from 0, of
                   float32(n_c) * v_c) / float32(sum of n_c)
  gate          = v >= float32(end_gate)
c, alpha, inf and end_gate are cast to float32 first.

Token accounting:
  policy_tokens += len(step) for every proposed step (expansion proposals,
                   merged duplicates included, and rollout proposals).
  value_tokens  += len(prefix) for every prefix scored by the value model:
                   each kept child of an expansion (prefix + step) and each
                   rollout proposal (prefix + step). A merged duplicate is not
                   scored, unless config["score_merged"] is true.

Public API: `run_reference(question, config, num_iterations) -> dict` and the
toy-model helpers `toy_hash`, `toy_proposal`, `toy_value`.
"""

import numpy as np

from restmcts_jax.search import sequential

F32 = np.float32

HASH_INIT = 7
HASH_MUL = 31
HASH_MOD = 10007
VALUE_MUL = 7919
VALUE_MOD = 1009
MAX_STEP_LEN = 2


# --------------------------------------------------------------------------
# Toy policy and value model.
# --------------------------------------------------------------------------

def toy_hash(prefix):
  """Integer hash of a token prefix (question + steps)."""
  h = HASH_INIT
  for x in prefix:
    h = (h * HASH_MUL + int(x)) % HASH_MOD
  return h


def toy_proposal(prefix, j):
  """Policy proposal number `j` for `prefix`: `(step tokens, final)`."""
  h = toy_hash(prefix)
  t = 1 + ((h * 17 + j * 131 + h // 7) % 5)
  step = [t] if t % 2 == 1 else [t, t]
  return step, t == 5


def toy_value(prefix):
  """Value-model score of `prefix` (question + steps, new step included)."""
  h = toy_hash(prefix)
  return F32((h * VALUE_MUL) % VALUE_MOD) / F32(VALUE_MOD)


# --------------------------------------------------------------------------
# The search.
# --------------------------------------------------------------------------

def run_reference(question, config, num_iterations):
  """Runs MCTS* with the toy model on one question.

  Args:
    question: the question's token ids (list of int).
    config: dict with b, d, m, c, alpha, inf, end_gate, stop_at_end_gate,
      max_depth (num_iterations there is ignored: the argument wins).
      Optional: score_merged (default False: merged duplicate proposals are
      not scored by the value model, so cost no value tokens); num_slots
      (raise ValueError when the tree would need more node slots).
    num_iterations: the iteration budget.

  Returns:
    dict of per-node lists indexed by node id (creation order; root = 0):
    parent (root -1), depth, step (token lists), visits (int), value,
    prior_value (python floats holding float32 values), final (bool),
    children (child ids in slot order); and answer_node, policy_tokens,
    value_tokens, iterations_run (iterations executed fully; the one that
    stops at the gate does not count), stopped_at_gate.
  """
  search = sequential.SequentialSearch(question, config, toy_proposal,
                                       toy_value)
  return search.run(int(num_iterations)).result()
