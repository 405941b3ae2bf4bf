"""`infer_value_targets` against a plain-Python transcription of SPEC.md.

The reference below is written from the SPEC text ("Quality value and weighted
reward (paper Eq. 1–2)" and "Inferring process rewards from a finished tree")
with one Python object per node and ordinary loops, in the style of the public
reference implementation. Random trees (hypothesis) are packed into one
fixed-shape batch of `Tree` arrays, so the jitted function compiles once.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restmcts_jax.rewards.value_targets import infer_value_targets
from restmcts_jax.search import tree as tree_lib

BATCH = 4  # trees per generated batch
SLOTS = 32  # node slots per tree (>= MAX_NODES)
MAX_NODES = 25
BRANCHING = 3
MAX_DEPTH = 6
STEP_LEN = 2
QUESTION_LEN = 3

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------
# Plain-Python reference, straight from SPEC.md.
# --------------------------------------------------------------------------

class Node:
  """One node of a search tree: the root (question) or one reasoning step."""

  def __init__(self, parent, final=False, correct=False):
    self.parent = parent  # index, -1 for the root
    self.children = []
    self.final = final
    self.correct = correct


def reference_targets(nodes):
  """SPEC labelling rules on a list of `Node`s (index 0 is the root).

  Returns `{node: (m, r, w, v)}` for every labelled node (the root never
  yields a record). `m` is an int, `r` in {0, 1}.
  """
  inf = math.inf

  # 1. Correct final leaves m = 0; every ancestor m = 1 + min over children
  #    with finite m. Finite m means r = 0.
  m_reach = [inf] * len(nodes)

  def distance(i):
    node = nodes[i]
    best = inf
    for c in node.children:
      distance(c)
      best = min(best, m_reach[c])
    if node.final and node.correct:
      m_reach[i] = 0
    elif best < inf:
      m_reach[i] = 1 + best

  distance(0)
  label = {}  # node -> (m, r)
  for i in range(1, len(nodes)):
    if m_reach[i] < inf:
      label[i] = (m_reach[i], 0)

  # 2. Every finished wrong leaf: walk up to the first ancestor with finite m;
  #    every node on the branch from just below it down to the leaf takes the
  #    ancestor's m and r = 1. No such ancestor: not labelled.
  for i, node in enumerate(nodes):
    if not (node.final and not node.correct):
      continue
    branch = [i]
    a = node.parent
    while a != -1 and m_reach[a] == inf:
      branch.append(a)
      a = nodes[a].parent
    if a == -1:
      continue
    for b in branch:
      if b in label:
        assert label[b] == (m_reach[a], 1)
      label[b] = (m_reach[a], 1)

  # 3. Walk down from the root with Eq. 1–2, v_0 = 0.
  records = {}
  v = {0: 0.0}
  stack = [0]
  while stack:
    i = stack.pop()
    for c in nodes[i].children:
      if c in label:
        assert i in v, "a labelled node must hang below the root or a label"
        m, r = label[c]
        w = (1.0 - v[i]) / (m + 1) * (1 - 2 * r)
        v[c] = max(v[i] + w, 0.0)
        records[c] = (m, r, w, v[c])
      stack.append(c)
  return records


# --------------------------------------------------------------------------
# Random trees and packing into `Tree` arrays.
# --------------------------------------------------------------------------

@st.composite
def random_tree(draw):
  """A list of `Node`s: <= MAX_NODES, branching <= 3, depth <= 6.

  Node indices are shuffled (root stays 0), and `correct` is random noise on
  nodes that are not final (it must be ignored there).
  """
  n = draw(st.integers(1, MAX_NODES))
  parent, depth, kids = [-1], [0], [[]]
  for i in range(1, n):
    eligible = [j for j in range(i)
                if len(kids[j]) < BRANCHING and depth[j] < MAX_DEPTH]
    # Mix uniform parents with "extend the newest node" for deep chains.
    p = draw(st.one_of(st.sampled_from(eligible), st.just(eligible[-1])))
    parent.append(p)
    depth.append(depth[p] + 1)
    kids.append([])
    kids[p].append(i)
  final = [i > 0 and not kids[i] and draw(st.booleans()) for i in range(n)]
  correct = [draw(st.booleans()) for _ in range(n)]
  perm = [0] + draw(st.permutations(range(1, n)))  # old index -> new index
  nodes = [None] * n
  for old in range(n):
    new_parent = perm[parent[old]] if parent[old] >= 0 else -1
    nodes[perm[old]] = Node(new_parent, final[old], correct[old])
  for old in range(n):
    nodes[perm[old]].children = [perm[c] for c in kids[old]]
  # Where each child sits among the K child slots (gaps allowed).
  slots = [draw(st.permutations(range(BRANCHING)))[:len(nd.children)]
           for nd in nodes]
  return nodes, slots


def _depths(nodes):
  depth = [0] * len(nodes)
  stack = [0]
  while stack:
    i = stack.pop()
    for c in nodes[i].children:
      depth[c] = depth[i] + 1
      stack.append(c)
  return depth


def pack(trees, num_slots=SLOTS):
  """`(Tree, correct [B, N])` from a list of `(nodes, slots)`."""
  b = len(trees)
  parent = np.full((b, num_slots), tree_lib.NO_PARENT, np.int32)
  depth = np.zeros((b, num_slots), np.int32)
  children = np.full((b, num_slots, BRANCHING), tree_lib.NO_CHILD, np.int32)
  final = np.zeros((b, num_slots), bool)
  correct = np.zeros((b, num_slots), bool)
  num_nodes = np.zeros((b,), np.int32)
  for t, (nodes, slots) in enumerate(trees):
    num_nodes[t] = len(nodes)
    depth[t, :len(nodes)] = _depths(nodes)
    for i, nd in enumerate(nodes):
      parent[t, i] = nd.parent
      final[t, i] = nd.final
      correct[t, i] = nd.correct
      for c, s in zip(nd.children, slots[i]):
        children[t, i, s] = c
  tree = tree_lib.Tree(
      parent=jnp.asarray(parent),
      depth=jnp.asarray(depth),
      children=jnp.asarray(children),
      step_tokens=jnp.zeros((b, num_slots, STEP_LEN), jnp.int32),
      step_len=jnp.zeros((b, num_slots), jnp.int32),
      visits=jnp.zeros((b, num_slots), jnp.int32),
      value=jnp.zeros((b, num_slots), jnp.float32),
      prior_value=jnp.zeros((b, num_slots), jnp.float32),
      final=jnp.asarray(final),
      num_nodes=jnp.asarray(num_nodes),
      question_tokens=jnp.ones((b, QUESTION_LEN), jnp.int32),
      question_len=jnp.full((b,), QUESTION_LEN, jnp.int32),
  )
  return tree, jnp.asarray(correct)


def _numpy(targets):
  return {k: np.asarray(getattr(targets, k))
          for k in ("m", "r", "w", "v", "labelled")}


def _has_correct_leaf(nodes):
  return any(nd.final and nd.correct for nd in nodes)


batches = st.lists(random_tree(), min_size=BATCH, max_size=BATCH)


# --------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------

@SETTINGS
@given(batches)
def test_matches_plain_python_reference(trees):
  out = _numpy(infer_value_targets(*pack(trees), max_depth=MAX_DEPTH))
  for t, (nodes, _) in enumerate(trees):
    ref = reference_targets(nodes)
    labelled = {i for i in range(SLOTS) if out["labelled"][t, i]}
    assert labelled == set(ref), (t, sorted(labelled), sorted(ref))
    for i, (m, r, w, v) in ref.items():
      assert out["m"][t, i] == m, (t, i)
      assert out["r"][t, i] == r, (t, i)
      np.testing.assert_allclose(out["w"][t, i], w, atol=1e-6)
      np.testing.assert_allclose(out["v"][t, i], v, atol=1e-6)


@SETTINGS
@given(batches)
def test_theorem_1_bounds(trees):
  tree, correct = pack(trees)
  out = _numpy(infer_value_targets(tree, correct, max_depth=MAX_DEPTH))
  parent = np.asarray(tree.parent)
  for t in range(BATCH):
    for i in np.flatnonzero(out["labelled"][t]):
      p = parent[t, i]
      v_prev = out["v"][t, p] if p != tree_lib.ROOT_INDEX else 0.0
      assert out["w"][t, i] <= 1.0 - v_prev + 1e-6
      assert -1e-7 <= out["v"][t, i] <= 1.0 + 1e-6
      np.testing.assert_allclose(
          out["v"][t, i], max(v_prev + out["w"][t, i], 0.0), atol=1e-6)
    assert not out["labelled"][t, tree_lib.ROOT_INDEX]


@SETTINGS
@given(batches)
def test_batch_rows_are_independent(trees):
  together = _numpy(infer_value_targets(*pack(trees), max_depth=MAX_DEPTH))
  for t in range(BATCH):
    alone = _numpy(infer_value_targets(*pack([trees[t]]), max_depth=MAX_DEPTH))
    np.testing.assert_array_equal(together["labelled"][t], alone["labelled"][0])
    lab = alone["labelled"][0]
    for k in ("m", "r"):
      np.testing.assert_array_equal(together[k][t][lab], alone[k][0][lab])
    for k in ("w", "v"):
      np.testing.assert_allclose(together[k][t], alone[k][0], atol=1e-6)


@SETTINGS
@given(batches)
def test_no_correct_leaf_no_labels(trees):
  tree, correct = pack(trees)
  out = _numpy(infer_value_targets(tree, correct, max_depth=MAX_DEPTH))
  for t, (nodes, _) in enumerate(trees):
    if not _has_correct_leaf(nodes):
      assert not out["labelled"][t].any(), t
  # Every answer wrong: nothing labelled anywhere.
  out = _numpy(infer_value_targets(tree, jnp.zeros_like(correct),
                                   max_depth=MAX_DEPTH))
  assert not out["labelled"].any()


# --------------------------------------------------------------------------
# SPEC worked example, by hand.
# --------------------------------------------------------------------------

def _worked_example():
  """Root 0; correct path 1-2-3-4; wrong branch 5-6 off node 2; unfinished
  branch 7-8 off node 1 and 9 off node 5."""
  nodes = [Node(-1)]
  for parent, final, correct in [
      (0, False, False),  # 1
      (1, False, False),  # 2
      (2, False, False),  # 3
      (3, True, True),    # 4 correct final answer
      (2, False, False),  # 5 wrong branch leaves the depth-2 node
      (5, True, False),   # 6 wrong final answer
      (1, False, False),  # 7 unfinished branch
      (7, False, True),   # 8 unfinished (correct flag is noise: not final)
      (5, False, False),  # 9 unfinished branch below the wrong branch
  ]:
    nodes.append(Node(parent, final, correct))
    nodes[parent].children.append(len(nodes) - 1)
  slots = [list(range(len(nd.children))) for nd in nodes]
  return nodes, slots


def test_spec_worked_example():
  nodes, slots = _worked_example()
  tree, correct = pack([(nodes, slots)], num_slots=12)
  out = _numpy(infer_value_targets(tree, correct, max_depth=MAX_DEPTH))
  lab = out["labelled"][0]
  assert set(np.flatnonzero(lab)) == {1, 2, 3, 4, 5, 6}
  np.testing.assert_array_equal(out["m"][0, [1, 2, 3, 4]], [3, 2, 1, 0])
  np.testing.assert_array_equal(out["r"][0, [1, 2, 3, 4]], [0, 0, 0, 0])
  np.testing.assert_allclose(out["v"][0, [1, 2, 3, 4]],
                             [0.25, 0.5, 0.75, 1.0], atol=1e-6)
  np.testing.assert_allclose(out["w"][0, [1, 2, 3, 4]], [0.25] * 4, atol=1e-6)
  np.testing.assert_array_equal(out["m"][0, [5, 6]], [2, 2])
  np.testing.assert_array_equal(out["r"][0, [5, 6]], [1, 1])
  np.testing.assert_allclose(out["w"][0, [5, 6]], [-1 / 6, -2 / 9], atol=1e-6)
  np.testing.assert_allclose(out["v"][0, [5, 6]], [1 / 3, 1 / 9], atol=1e-6)
  # The reference agrees with the hand values.
  ref = reference_targets(nodes)
  assert set(ref) == {1, 2, 3, 4, 5, 6}
  for i, v in zip([1, 2, 3, 4, 5, 6], [0.25, 0.5, 0.75, 1.0, 1 / 3, 1 / 9]):
    assert ref[i][3] == pytest.approx(v)


def test_worked_example_without_correct_answer_yields_nothing():
  nodes, slots = _worked_example()
  nodes[4].correct = False
  tree, correct = pack([(nodes, slots)], num_slots=12)
  out = _numpy(infer_value_targets(tree, correct, max_depth=MAX_DEPTH))
  assert not out["labelled"].any()
  assert reference_targets(nodes) == {}
