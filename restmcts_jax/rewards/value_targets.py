"""Per-step value targets inferred from finished trees (SPEC Eq. 1–2).

Given which final leaves are correct, every node gets a reasoning distance
`m` (fewest further steps to a correct answer) and a hard estimate `r`, and
the quality values follow top-down:

    v_0 = 0,   v_k = max(v_{k-1} + w_k, 0),
    w_k = (1 - v_{k-1}) / (m_k + 1) * (1 - 2 r_k).

Labelling (SPEC "Inferring process rewards from a finished tree"):
  1. a correct final leaf has m = 0; an ancestor m = 1 + min over children
     with finite m; nodes with finite m have r = 0;
  2. a node on a wrong branch — between a finished wrong leaf and its nearest
     ancestor with finite m — takes that ancestor's m and r = 1;
  3. other nodes (unfinished branches, wrong leaves with no such ancestor) are
     not labelled, and a tree without a correct leaf yields no labels.

Every rule is a fixed number of vectorised sweeps over all nodes (one per
depth level), so it runs under `jit` for the whole batch of trees.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from restmcts_jax.search import tree as tree_lib

Array = jax.Array

# Reasoning distance of a node that cannot reach a correct answer.
UNREACHABLE = jnp.iinfo(jnp.int32).max // 2


@struct.dataclass
class ValueTargets:
  """Labels of every node of B trees of N slots.

  Attributes:
    m: `[B, N]` reasoning distance used in Eq. 2: UNREACHABLE where no
      correct answer is reachable and the node is on no wrong branch (the
      root, never labelled, holds its distance too).
    r: `[B, N]` hard estimate, 0 or 1.
    w: `[B, N]` weighted reward (0 where unlabelled).
    v: `[B, N]` quality value target in [0, 1] (0 where unlabelled).
    labelled: `[B, N]` the node yields a record (never the root).
  """

  m: Array
  r: Array
  w: Array
  v: Array
  labelled: Array


def weighted_reward(v_prev: Array, m: Array, r: Array) -> Array:
  """Eq. 2: `w_k = (1 - v_{k-1}) / (m_k + 1) * (1 - 2 r_k)`."""
  return (1.0 - v_prev) / (m.astype(jnp.float32) + 1.0) * (1.0 - 2.0 * r)


def _sweep(num_levels: int, step, init):
  """Applies `step` `num_levels` times (one pass per depth level)."""
  return jax.lax.fori_loop(0, num_levels, lambda _, x: step(x), init)


def _targets_one(t: tree_lib.Tree, correct: Array, max_depth: int):
  """`infer_value_targets` for one (unbatched) tree."""
  n = t.parent.shape[0]
  used = jnp.arange(n) < t.num_nodes
  kids = jnp.maximum(t.children, 0)
  has_kid = t.children != tree_lib.NO_CHILD
  parent = jnp.maximum(t.parent, 0)
  is_root = jnp.arange(n) == tree_lib.ROOT_INDEX
  correct_leaf = used & t.final & correct
  wrong_leaf = used & t.final & ~correct

  # 1. Distance to the nearest correct leaf below, bottom-up.
  def distance(m):
    via_kids = jnp.min(jnp.where(has_kid, m[kids], UNREACHABLE), axis=-1)
    return jnp.where(correct_leaf, 0,
                     jnp.minimum(UNREACHABLE, via_kids + 1))
  m_reach = _sweep(max_depth + 1, distance,
                   jnp.full((n,), UNREACHABLE, jnp.int32))
  reachable = used & (m_reach < UNREACHABLE)

  # 2. Wrong branches: a subtree holding a wrong leaf, below a reachable node.
  def holds_wrong(h):
    return wrong_leaf | jnp.any(has_kid & h[kids], axis=-1)
  below_wrong = _sweep(max_depth + 1, holds_wrong, wrong_leaf)

  def nearest_reachable_m(a):  # top-down: m of the nearest reachable ancestor
    from_parent = jnp.where(reachable[parent], m_reach[parent], a[parent])
    return jnp.where(is_root, UNREACHABLE, from_parent)
  ancestor_m = _sweep(max_depth + 1, nearest_reachable_m,
                      jnp.full((n,), UNREACHABLE, jnp.int32))
  on_wrong_branch = (used & ~reachable & below_wrong
                     & (ancestor_m < UNREACHABLE))

  labelled = (reachable | on_wrong_branch) & ~is_root
  m = jnp.where(reachable, m_reach,
                jnp.where(on_wrong_branch, ancestor_m, UNREACHABLE))
  r = on_wrong_branch.astype(jnp.int32)

  # 3. Eq. 1–2, top-down from v_0 = 0 at the root.
  def values(v):
    v_prev = v[parent]
    return jnp.where(labelled,
                     jnp.maximum(v_prev + weighted_reward(v_prev, m, r), 0.0),
                     0.0)
  v = _sweep(max_depth, values, jnp.zeros((n,), jnp.float32))
  w = jnp.where(labelled, weighted_reward(v[parent], m, r), 0.0)
  return ValueTargets(m=m, r=r, w=w, v=v, labelled=labelled)


@functools.partial(jax.jit, static_argnames="max_depth")
def infer_value_targets(
    tree: tree_lib.Tree, correct: Array, *, max_depth: int
) -> ValueTargets:
  """Value targets for every node of a batch of finished trees.

  Args:
    tree: B finished search trees.
    correct: `[B, N]` whether each node's final answer is correct (read only
      where `tree.final`).
    max_depth: deepest node the trees can hold.
  """
  one = lambda t, c: _targets_one(t, c, max_depth)
  return jax.vmap(one)(tree, correct)


@struct.dataclass
class ValueRecords:
  """`D_V`: one `(Q, p_k, v_k)` record per labelled node, as padded rows.

  Attributes:
    tokens: `[R, L]` question + partial solution, right-padded.
    lengths: `[R]`.
    target: `[R]` value target v.
    question: `[R]` which question (row of the tree batch).
    depth: `[R]` steps of the partial solution (1 = first step).
  """

  tokens: Array
  lengths: Array
  target: Array
  question: Array
  depth: Array


def value_records(tree: tree_lib.Tree, targets: ValueTargets, *,
                  max_depth: int) -> ValueRecords:
  """Records of every labelled node (host side: the count is data-dependent).
  """
  keep = np.asarray(targets.labelled)
  tokens, lengths, question = tree_lib.prefix_rows(tree, keep,
                                                   max_depth=max_depth)
  return ValueRecords(tokens=tokens, lengths=lengths,
                      target=np.asarray(targets.v)[keep], question=question,
                      depth=np.asarray(tree.depth)[keep])
