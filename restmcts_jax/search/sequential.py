"""MCTS* one node at a time: one Python object per node, one model call per
proposal and per scored prefix.

This is the pattern of the PyTorch reference implementation, written plainly
from SPEC.md. It is the oracle the batched `mcts_star.search` is tested
against (driven by a deterministic toy model) and the baseline it is
benchmarked against (driven by the same LM, `bench/search.py`). All value
arithmetic is float32, in the order the batched search uses:
  UCT (n_c > 0) = v_c + c * sqrt((2 * log(n_parent)) / n_c);  (n_c = 0) v_c + inf
  blend         = (1 - alpha) * v + alpha * v_max
  back-prop     = (sum over children in slot order of n_c * v_c) / sum n_c
Ties go to the first child in slot order.
"""

import numpy as np

F32 = np.float32


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


class SequentialSearch:
  """MCTS* over one question, one node and one model call at a time.

  Args:
    question: token ids.
    config: dict with b, d, m, c, alpha, inf, end_gate, stop_at_end_gate,
      max_depth; optional score_merged (score merged duplicate proposals too,
      as the batched search does), num_slots (raise when the tree would
      outgrow that many nodes) and rollout_answers (keep the finished
      rollout of highest value as a candidate answer, as
      `MCTSConfig.rollout_answers`).
    propose: `(prefix tokens, j) -> (step tokens, final)`, proposal j.
    score: `prefix tokens -> value` of a partial solution.
  """

  def __init__(self, question, config, propose, score):
    self._propose = propose
    self._score = score
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
    self.rollout_answers = bool(config.get("rollout_answers", False))
    self.best_rollout = None  # (start node, steps, value) of the best one
    self.nodes = [Node(0, -1, 0, [], F32(0.0), False)]
    self.policy_tokens = 0
    self.value_tokens = 0
    self.iterations_run = 0
    self.stopped_at_gate = False
    self.gate_node = None

  # ---- model calls with token accounting ---------------------------------

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
    step, final = self._propose(prefix, j)
    self.policy_tokens += len(step)
    return step, final

  def score(self, prefix):
    """Value of `prefix`; counts its tokens."""
    self.value_tokens += len(prefix)
    return F32(self._score(prefix))

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
    """Greedy MC rollout from the leaf's best child C'; C'.n += 1. v_max
    starts at 0, the reference's value floor: with m = 0 C' is blended
    toward it."""
    child = self.nodes[self.best_child(self.nodes[leaf_id])]
    if not child.final:
      v_max = F32(0.0)
      prefix = self.prefix(child.index)
      steps = []
      for _ in range(self.m):
        best_step, best_value, best_final = None, None, False
        for j in range(self.d):
          step, final = self.propose(prefix, j)
          value = self.score(prefix + step)
          if best_step is None or value > best_value:
            best_step, best_value, best_final = step, value, final
        v_max = max(v_max, best_value)
        prefix = prefix + best_step
        steps.append(best_step)
        if best_final:
          if self.rollout_answers and (self.best_rollout is None or
                                       best_value > self.best_rollout[2]):
            self.best_rollout = (child.index, steps, best_value)
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

  def best_node(self):
    """The non-root node of highest v (the first id among ties)."""
    best = 0
    for node in self.nodes[1:]:
      if best == 0 or node.value > self.nodes[best].value:
        best = node.index
    return best

  def answer_is_rollout(self):
    """Whether the best finished rollout is the answer (rollout_answers):
    no gate node, and its value is above the best node's."""
    best = self.best_node()
    return (not self.stopped_at_gate and self.best_rollout is not None and
            (best == 0 or self.best_rollout[2] > self.nodes[best].value))

  def answer(self):
    """The gate node, else the best node, or the start node of the best
    finished rollout where that is the answer."""
    if self.stopped_at_gate:
      return self.gate_node
    if self.answer_is_rollout():
      return self.best_rollout[0]
    return self.best_node()

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
        "answer_is_rollout": self.answer_is_rollout(),
        "best_rollout": self.best_rollout,
        "policy_tokens": self.policy_tokens,
        "value_tokens": self.value_tokens,
        "iterations_run": self.iterations_run,
        "stopped_at_gate": self.stopped_at_gate,
    }
