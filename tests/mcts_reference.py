"""Plain-Python MCTS* (SPEC.md, "MCTS*") driven by a deterministic toy model.

This module is a reference for the batched, jit-compiled search in
`restmcts_jax.search.mcts_star`: one Python object per node, ordinary loops, no
JAX. The policy and the value model are replaced by integer hash functions of
the token prefix, so a JAX implementation can reproduce them exactly.

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

class Node:
  """One tree node: the root (the question, empty step) or one step."""

  def __init__(self, index, parent, depth, step, value, final):
    self.index = index
    self.parent = parent  # node id; -1 for the root
    self.depth = depth
    self.step = list(step)
    self.visits = 0
    self.value = F32(value)
    self.prior_value = F32(value)
    self.final = bool(final)
    self.children = []  # node ids in slot (creation) order


class ReferenceSearch:
  """MCTS* over one question with the toy model; see `run_reference`."""

  def __init__(self, question, config):
    self.question = [int(x) for x in question]
    self.b = int(config["b"])
    self.d = int(config["d"])
    self.m = int(config["m"])
    self.c = F32(config["c"])
    self.alpha = F32(config["alpha"])
    self.inf = F32(config["inf"])
    self.end_gate = F32(config["end_gate"])
    self.stop_at_end_gate = bool(config["stop_at_end_gate"])
    self.max_depth = int(config["max_depth"])
    self.score_merged = bool(config.get("score_merged", False))
    self.num_slots = config.get("num_slots")  # optional capacity check
    self.nodes = [Node(0, -1, 0, [], F32(0.0), False)]
    self.policy_tokens = 0
    self.value_tokens = 0
    self.iterations_run = 0
    self.stopped_at_gate = False
    self.gate_node = None

  # ---- toy model with token accounting ----------------------------------

  def prefix(self, node_id):
    """Question + steps on the root path of `node_id` (root first)."""
    steps = []
    while node_id > 0:
      steps.append(self.nodes[node_id].step)
      node_id = self.nodes[node_id].parent
    out = list(self.question)
    for step in reversed(steps):
      out.extend(step)
    return out

  def propose(self, prefix, j):
    """Policy proposal `j`; counts its tokens."""
    step, final = toy_proposal(prefix, j)
    self.policy_tokens += len(step)
    return step, final

  def score(self, prefix):
    """Value of `prefix`; counts its tokens."""
    self.value_tokens += len(prefix)
    return toy_value(prefix)

  # ---- the four phases ---------------------------------------------------

  def uct(self, parent, child):
    """Selection score of `child` under `parent` (float32)."""
    if child.visits == 0:
      return child.value + self.inf
    assert parent.visits > 0, "a visited child under an unvisited parent"
    log_n = F32(np.log(F32(parent.visits)))
    bonus = np.sqrt(F32(2.0) * log_n / F32(child.visits))
    return child.value + self.c * bonus

  def best_child(self, node):
    """Child id of highest UCT; the first in slot order among ties."""
    best, best_score = None, None
    for cid in node.children:
      s = self.uct(node, self.nodes[cid])
      if best is None or s > best_score:
        best, best_score = cid, s
    return best

  def select(self):
    """Descends from the root while the node has children; the leaf's id."""
    node = self.nodes[0]
    while node.children:
      node = self.nodes[self.best_child(node)]
    return node.index

  def expand(self, leaf_id):
    """Adds up to b merged proposals as children; whether it expanded."""
    leaf = self.nodes[leaf_id]
    if leaf.final or leaf.depth >= self.max_depth:
      return False
    prefix = self.prefix(leaf_id)
    seen = [self.nodes[cid].step for cid in leaf.children]
    for j in range(self.b):
      step, final = self.propose(prefix, j)
      if step in seen:
        if self.score_merged:
          self.score(prefix + step)
        continue
      seen.append(step)
      value = self.score(prefix + step)
      index = len(self.nodes)
      if self.num_slots is not None and index >= self.num_slots:
        raise ValueError("tree outgrew num_slots; the reference has no "
                         "capacity limit, size the slots for the budget")
      self.nodes.append(
          Node(index, leaf_id, leaf.depth + 1, step, value, final))
      leaf.children.append(index)
    return True

  def rollout(self, leaf_id):
    """Greedy MC rollout from the leaf's best child C'; C'.n += 1."""
    child = self.nodes[self.best_child(self.nodes[leaf_id])]
    if not child.final:
      v_max = F32(0.0)
      prefix = self.prefix(child.index)
      for _ in range(self.m):
        best_step, best_value, best_final = None, None, False
        for j in range(self.d):
          step, final = self.propose(prefix, j)
          value = self.score(prefix + step)
          if best_step is None or value > best_value:
            best_step, best_value, best_final = step, value, final
        v_max = max(v_max, best_value)
        prefix = prefix + best_step
        if best_final:
          break
      child.value = (F32(1.0) - self.alpha) * child.value + self.alpha * v_max
    child.visits += 1
    return child.index

  def backprop(self, leaf_id):
    """n += 1 on the root path (leaf first); v = visit-weighted child mean."""
    node_id = leaf_id
    while node_id >= 0:
      node = self.nodes[node_id]
      node.visits += 1
      total_n = sum(self.nodes[cid].visits for cid in node.children)
      if node.children and total_n > 0:
        acc = F32(0.0)
        for cid in node.children:
          ch = self.nodes[cid]
          acc = acc + F32(ch.visits) * ch.value
        node.value = acc / F32(total_n)
      node_id = node.parent

  def iterate(self):
    """One iteration; False when the search stopped at the end gate."""
    leaf_id = self.select()
    leaf = self.nodes[leaf_id]
    if self.stop_at_end_gate and leaf_id != 0 and leaf.value >= self.end_gate:
      self.stopped_at_gate = True
      self.gate_node = leaf_id
      return False
    if self.expand(leaf_id):
      self.rollout(leaf_id)
    self.backprop(leaf_id)
    self.iterations_run += 1
    return True

  def run(self, num_iterations):
    """Runs up to `num_iterations` iterations (fewer if stopped at the gate)."""
    for _ in range(num_iterations):
      if not self.iterate():
        break
    return self

  def answer(self):
    """The gate node, else the non-root node of highest v (first id)."""
    if self.stopped_at_gate:
      return self.gate_node
    best = 0
    for node in self.nodes[1:]:
      if best == 0 or node.value > self.nodes[best].value:
        best = node.index
    return best

  def result(self):
    """The tree as per-node lists plus the search summary."""
    nodes = self.nodes
    return {
        "parent": [n.parent for n in nodes],
        "depth": [n.depth for n in nodes],
        "step": [list(n.step) for n in nodes],
        "visits": [int(n.visits) for n in nodes],
        "value": [float(n.value) for n in nodes],
        "prior_value": [float(n.prior_value) for n in nodes],
        "final": [bool(n.final) for n in nodes],
        "children": [list(n.children) for n in nodes],
        "answer_node": self.answer(),
        "policy_tokens": self.policy_tokens,
        "value_tokens": self.value_tokens,
        "iterations_run": self.iterations_run,
        "stopped_at_gate": self.stopped_at_gate,
    }


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
  search = ReferenceSearch(question, config)
  return search.run(int(num_iterations)).result()


__all__ = ["run_reference", "toy_hash", "toy_proposal", "toy_value",
           "ReferenceSearch", "Node", "MAX_STEP_LEN"]
