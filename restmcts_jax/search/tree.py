"""Batched step trees as fixed-shape arrays (in the spirit of mctx's `Tree`).

One tree per question, B questions, N node slots each. Node 0 is the root: the
question itself, with an empty step. Every other node holds ONE reasoning step;
its partial solution is the question followed by the steps on its root path.
Shapes are fixed, so one compiled program serves every question of the batch.
Functions here are written for the whole batch; per-tree logic is `vmap`ped.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

ROOT_INDEX = 0
NO_PARENT = -1
NO_CHILD = -1


@struct.dataclass
class Tree:
  """B trees of N node slots, up to K children per node, S tokens per step.

  Shapes are given batched; per-tree functions see them without the B axis
  (the size properties work on both).

  Attributes:
    parent: `[B, N]` parent index; NO_PARENT for the root and unused slots.
    depth: `[B, N]` root = 0.
    children: `[B, N, K]` child indices, NO_CHILD where none.
    step_tokens: `[B, N, S]` the node's step, 0-padded (root: empty).
    step_len: `[B, N]` tokens in the step.
    visits: `[B, N]` visit count n.
    value: `[B, N]` current value v in [0, 1].
    prior_value: `[B, N]` what the value model said when the node was made.
    final: `[B, N]` the step carries a final answer (the node is a leaf).
    num_nodes: `[B]` used slots (nodes 0 .. num_nodes - 1).
    question_tokens: `[B, Q]` question, 0-padded.
    question_len: `[B]` question length.
  """

  parent: Array
  depth: Array
  children: Array
  step_tokens: Array
  step_len: Array
  visits: Array
  value: Array
  prior_value: Array
  final: Array
  num_nodes: Array
  question_tokens: Array
  question_len: Array

  @property
  def batch_size(self) -> int:
    return self.parent.shape[0]

  @property
  def num_slots(self) -> int:
    return self.parent.shape[-1]

  @property
  def branching(self) -> int:
    return self.children.shape[-1]

  @property
  def max_step_len(self) -> int:
    return self.step_tokens.shape[-1]

  @property
  def used(self) -> Array:
    """`[B, N]` (or `[N]` for one tree) whether each slot holds a node."""
    return jnp.arange(self.num_slots) < self.num_nodes[..., None]

  @property
  def expanded(self) -> Array:
    """`[B, N]` (or `[N]`) whether each node has children."""
    return jnp.any(self.children != NO_CHILD, axis=-1)


def init_tree(
    question_tokens: Array,
    question_len: Array,
    *,
    num_slots: int,
    branching: int,
    max_step_len: int,
    root_value: float = 0.0,
) -> Tree:
  """B trees holding only their root.

  Args:
    question_tokens: `[B, Q]` question tokens, 0-padded.
    question_len: `[B]`.
    num_slots: N, nodes per tree (root included).
    branching: K, most children per node.
    max_step_len: S, most tokens per step.
    root_value: initial value of the root.
  """
  b, n = question_tokens.shape[0], num_slots
  return Tree(
      parent=jnp.full((b, n), NO_PARENT, jnp.int32),
      depth=jnp.zeros((b, n), jnp.int32),
      children=jnp.full((b, n, branching), NO_CHILD, jnp.int32),
      step_tokens=jnp.zeros((b, n, max_step_len), jnp.int32),
      step_len=jnp.zeros((b, n), jnp.int32),
      visits=jnp.zeros((b, n), jnp.int32),
      value=jnp.zeros((b, n), jnp.float32).at[:, ROOT_INDEX].set(root_value),
      prior_value=jnp.zeros((b, n), jnp.float32).at[:, ROOT_INDEX].set(
          root_value),
      final=jnp.zeros((b, n), bool),
      num_nodes=jnp.ones((b,), jnp.int32),
      question_tokens=question_tokens.astype(jnp.int32),
      question_len=question_len.astype(jnp.int32),
  )


def _same_step(tokens_a, len_a, tokens_b, len_b):
  """Whether two steps `[S]` are the same text."""
  return (len_a == len_b) & jnp.all(tokens_a == tokens_b)


def _add_children_one(tree: Tree, node, tokens, lengths, values, final, valid):
  """`add_children` for one tree (unbatched fields)."""
  k = tokens.shape[0]
  existing = tree.children[node]  # [K]
  existing_ok = existing != NO_CHILD
  ex_tokens = tree.step_tokens[jnp.maximum(existing, 0)]
  ex_len = tree.step_len[jnp.maximum(existing, 0)]
  same = jax.vmap(jax.vmap(_same_step, (None, None, 0, 0)), (0, 0, None, None))
  # Duplicate of an existing child, or of an earlier new candidate.
  dup_existing = jnp.any(same(tokens, lengths, ex_tokens, ex_len)
                         & existing_ok[None], axis=1)
  pairwise = same(tokens, lengths, tokens, lengths)
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)
  dup_new = jnp.any(pairwise & earlier & valid[None, :], axis=1)
  keep = valid & ~dup_existing & ~dup_new
  # Free child slots of `node`, and free node slots of the tree.
  free_child = jnp.cumsum(~existing_ok) * ~existing_ok  # 1-based rank
  rank = jnp.cumsum(keep) * keep  # 1-based rank among kept candidates
  keep = keep & (rank <= jnp.sum(~existing_ok))
  keep = keep & (tree.num_nodes + rank <= tree.num_slots)
  rank = rank * keep
  new_index = jnp.where(keep, tree.num_nodes + rank - 1, NO_CHILD)
  # Child slot j (free, rank r) receives the kept candidate of rank r.
  cand_of_slot = jnp.argmax((rank[None, :] == free_child[:, None])
                            & (free_child[:, None] > 0), axis=1)
  slot_filled = (free_child > 0) & jnp.any(
      (rank[None, :] == free_child[:, None]) & keep[None, :], axis=1)
  children = jnp.where(slot_filled, new_index[cand_of_slot], existing)
  target = jnp.where(keep, new_index, tree.num_slots)  # out of range: dropped
  set_ = lambda arr, x: arr.at[target].set(x, mode="drop")
  tree = tree.replace(
      parent=set_(tree.parent, jnp.full((k,), node, jnp.int32)),
      depth=set_(tree.depth, jnp.full((k,), tree.depth[node] + 1, jnp.int32)),
      step_tokens=set_(tree.step_tokens, tokens.astype(jnp.int32)),
      step_len=set_(tree.step_len, lengths.astype(jnp.int32)),
      value=set_(tree.value, values.astype(jnp.float32)),
      prior_value=set_(tree.prior_value, values.astype(jnp.float32)),
      final=set_(tree.final, final),
      children=tree.children.at[node].set(children),
      num_nodes=tree.num_nodes + jnp.sum(keep),
  )
  return tree, new_index


def add_children(
    tree: Tree,
    node: Array,
    tokens: Array,
    lengths: Array,
    values: Array,
    final: Array,
    valid: Array,
) -> tuple[Tree, Array]:
  """Adds up to K candidate steps as children of `node` in every tree.

  A candidate is dropped when it is invalid, repeats an existing child's step
  or an earlier candidate's step (identical steps are merged), or does not fit
  (no free child or node slot).

  Args:
    tree: the batch of trees.
    node: `[B]` the parent in each tree.
    tokens: `[B, K, S]` candidate steps.
    lengths: `[B, K]` their lengths.
    values: `[B, K]` their values from the value model.
    final: `[B, K]` whether each carries a final answer.
    valid: `[B, K]` which candidates to consider (e.g. rows that are searching).

  Returns:
    The trees and `[B, K]` the new node index of each candidate (NO_CHILD
    where dropped).
  """
  return jax.vmap(_add_children_one)(
      tree, node, tokens, lengths, values, final, valid)


def from_paths(
    question_tokens: np.ndarray,
    question_len: np.ndarray,
    paths: Sequence[Sequence[Sequence[Sequence[int]]]],
    *,
    max_step_len: int,
    bucket_shapes: bool = False,
) -> tuple[Tree, list[list[int]]]:
  """B trees holding given solutions (host side, for data, not search).

  Paths sharing their first k steps share the first k nodes (a trie), so the
  trees look like search trees over the same solutions. The last step of each
  path is marked final; N and K are the largest node and child counts, or
  with `bucket_shapes` those rounded up to powers of two (empty slots), so
  that batches of similar trees share compiled programs.

  Args:
    question_tokens: `[B, Q]` question tokens, 0-padded.
    question_len: `[B]`.
    paths: per tree, its solutions; a solution is a sequence of steps, a step
      a sequence of at most `max_step_len` token ids.
    max_step_len: S.

  Returns:
    The trees, and per tree the node index where each path ends.
  """
  nodes = []  # per tree: {steps so far (tuple of tuples): node index}
  for tree_paths in paths:
    index = {(): ROOT_INDEX}
    for path in tree_paths:
      for k in range(1, len(path) + 1):
        index.setdefault(tuple(map(tuple, path[:k])), len(index))
    nodes.append(index)
  b, n = len(paths), max(map(len, nodes))
  kids = [[0] * len(index) for index in nodes]
  for tree_kids, index in zip(kids, nodes):
    for key in index:
      if key:
        tree_kids[index[key[:-1]]] += 1
  k = max(1, max(max(c) for c in kids))
  if bucket_shapes:
    n, k = 1 << (n - 1).bit_length(), 1 << (k - 1).bit_length()
  parent = np.full((b, n), NO_PARENT, np.int32)
  depth = np.zeros((b, n), np.int32)
  children = np.full((b, n, k), NO_CHILD, np.int32)
  step_tokens = np.zeros((b, n, max_step_len), np.int32)
  step_len = np.zeros((b, n), np.int32)
  final = np.zeros((b, n), bool)
  ends = [[index[tuple(map(tuple, path))] for path in tree_paths]
          for index, tree_paths in zip(nodes, paths)]
  for t, index in enumerate(nodes):
    filled = np.zeros(n, np.int32)
    for key, i in index.items():
      if not key:
        continue
      p = index[key[:-1]]
      parent[t, i], depth[t, i] = p, len(key)
      children[t, p, filled[p]] = i
      filled[p] += 1
      if len(key[-1]) > max_step_len:
        raise ValueError(f"tree {t}: a step has {len(key[-1])} tokens, more "
                         f"than max_step_len={max_step_len}")
      step_tokens[t, i, :len(key[-1])] = key[-1]
      step_len[t, i] = len(key[-1])
    final[t, ends[t]] = True
  final[:, ROOT_INDEX] = False  # an empty path ends at the root
  tree = Tree(
      parent=parent, depth=depth, children=children, step_tokens=step_tokens,
      step_len=step_len, visits=np.zeros((b, n), np.int32),
      value=np.zeros((b, n), np.float32),
      prior_value=np.zeros((b, n), np.float32), final=final,
      num_nodes=np.array([len(index) for index in nodes], np.int32),
      question_tokens=np.asarray(question_tokens, np.int32),
      question_len=np.asarray(question_len, np.int32))
  return tree, ends


def _root_path(t: Tree, node: Array, max_depth: int) -> Array:
  """`[max_depth + 1]` root-to-`node` indices in one (unbatched) tree."""
  def body(_, carry):
    path, cursor = carry
    d = t.depth[jnp.maximum(cursor, 0)]
    path = jnp.where((cursor >= 0) & (jnp.arange(max_depth + 1) == d),
                     cursor, path)
    return path, jnp.where(cursor >= 0, t.parent[jnp.maximum(cursor, 0)], -1)

  init = (jnp.full((max_depth + 1,), NO_PARENT, jnp.int32),
          jnp.asarray(node, jnp.int32))
  return jax.lax.fori_loop(0, max_depth + 1, body, init)[0]


def root_paths(tree: Tree, max_depth: int) -> Array:
  """`[B, N, max_depth + 1]` node indices from the root down to each node.

  Entry `d` is the ancestor at depth `d` (the node itself at its own depth);
  entries past the node's depth are NO_PARENT.
  """
  nodes = jnp.arange(tree.num_slots)
  per_tree = lambda t: jax.vmap(lambda n: _root_path(t, n, max_depth))(nodes)
  return jax.vmap(per_tree)(tree)


def prefix_sources(t: Tree, node, max_depth: int, width: int):
  """Where each position of `node`'s prefix comes from, in one tree.

  Position `j < width` of question + steps holds token `offset[j]` of the
  question (`from_question[j]`) or of the step of node `step_node[j]`.

  Returns:
    `(from_question, step_node, offset, valid)`, each `[width]`, and the
    prefix length.
  """
  path = _root_path(t, node, max_depth)[1:]  # steps at depths 1..max_depth
  step_nodes = jnp.maximum(path, 0)
  # Segment 0 is the question, segment d the step at depth d.
  seg_len = jnp.concatenate(
      [t.question_len[None], jnp.where(path >= 0, t.step_len[step_nodes], 0)])
  ends = jnp.cumsum(seg_len)
  j = jnp.arange(width)
  seg = jnp.minimum(jnp.searchsorted(ends, j, side="right"), max_depth)
  offset = j - (ends - seg_len)[seg]
  total = ends[-1]
  return (seg == 0, step_nodes[jnp.maximum(seg - 1, 0)], offset, j < total,
          total)


def _gather_prefix_one(t: Tree, node, max_depth: int, max_len: int):
  from_question, step_node, offset, valid, total = prefix_sources(
      t, node, max_depth, max_len)
  question = t.question_tokens[
      jnp.clip(offset, 0, t.question_tokens.shape[0] - 1)]
  step = t.step_tokens[step_node, jnp.clip(offset, 0, t.max_step_len - 1)]
  tokens = jnp.where(valid, jnp.where(from_question, question, step), 0)
  return tokens, jnp.minimum(total, max_len)


def gather_prefix(
    tree: Tree, node: Array, *, max_depth: int, max_len: int
) -> tuple[Array, Array]:
  """Question + steps on the root path of `node`, as one padded row per tree.

  Args:
    tree: the batch of trees.
    node: `[B]` node index in each tree.
    max_depth: deepest node the trees can hold.
    max_len: width of the output rows; longer prefixes are truncated.

  Returns:
    `tokens [B, max_len]` (right-padded with 0) and `lengths [B]`.
  """
  one = lambda t, n: _gather_prefix_one(t, n, max_depth, max_len)
  return jax.vmap(one)(tree, node)


@functools.partial(jax.jit, static_argnames="max_depth")
def _every_prefix(tree: Tree, *, max_depth: int) -> tuple[Array, Array]:
  """`gather_prefix` of every node: `tokens [B, N, L]`, `lengths [B, N]`."""
  b, n = tree.parent.shape
  width = tree.question_tokens.shape[1] + max_depth * tree.max_step_len
  gather = jax.vmap(
      lambda node: gather_prefix(tree, node, max_depth=max_depth,
                                 max_len=width),
      in_axes=1, out_axes=1)
  return gather(jnp.broadcast_to(jnp.arange(n), (b, n)))


def prefix_rows(tree: Tree, mask, *, max_depth: int):
  """Question + steps of every node where `mask [B, N]`, on the host.

  Returns:
    `tokens [R, L]` (right-padded), `lengths [R]`, and `question [R]` (the
    tree each row comes from), in (tree, node) order.
  """
  tokens, lengths = jax.device_get(_every_prefix(tree, max_depth=max_depth))
  keep = np.asarray(mask)
  return tokens[keep], lengths[keep], np.nonzero(keep)[0]
