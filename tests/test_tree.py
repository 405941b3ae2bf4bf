"""Batched tree arrays: adding children (with merging of identical steps),
root paths and prefix gathering."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from restmcts_jax.search import tree as tree_lib

S = 4  # tokens per step


def _tree(batch=2, slots=8, branching=3):
  q = jnp.array([[11, 12, 13, 0], [21, 22, 0, 0]])[:batch]
  return tree_lib.init_tree(q, jnp.array([3, 2])[:batch], num_slots=slots,
                            branching=branching, max_step_len=S)


def _steps(*rows):
  """`[B, K, S]` tokens and `[B, K]` lengths from lists of token lists."""
  tokens = np.zeros((len(rows), len(rows[0]), S), np.int32)
  lengths = np.zeros((len(rows), len(rows[0])), np.int32)
  for b, row in enumerate(rows):
    for k, step in enumerate(row):
      tokens[b, k, :len(step)] = step
      lengths[b, k] = len(step)
  return jnp.array(tokens), jnp.array(lengths)


def _add(tree, node, rows, valid=None):
  tokens, lengths = _steps(*rows)
  shape = lengths.shape
  values = jnp.arange(shape[0] * shape[1], dtype=jnp.float32).reshape(shape) / 10
  valid = jnp.ones(shape, bool) if valid is None else jnp.array(valid)
  return tree_lib.add_children(tree, jnp.array(node), tokens, lengths, values,
                               jnp.zeros(shape, bool), valid)


def test_add_children_merges_identical_steps_and_fills_slots_in_order():
  tree = _tree()
  tree, idx = _add(tree, [0, 0], [[[1, 2], [3], [1, 2]], [[5], [6], [7]]])
  np.testing.assert_array_equal(idx, [[1, 2, -1], [1, 2, 3]])
  np.testing.assert_array_equal(tree.num_nodes, [3, 4])
  np.testing.assert_array_equal(tree.children[0, 0], [1, 2, -1])
  np.testing.assert_array_equal(tree.parent[0, :4], [-1, 0, 0, -1])
  np.testing.assert_array_equal(tree.depth[1, :4], [0, 1, 1, 1])
  np.testing.assert_allclose(tree.value[0, 1:3], [0.0, 0.1])
  np.testing.assert_allclose(tree.prior_value[1, 1:4], [0.3, 0.4, 0.5])
  # A second expansion of tree 0's root: [3] repeats child 2; [1, 2, 9] is
  # new and takes the last free child slot; the rest do not fit.
  tree, idx = _add(tree, [0, 1], [[[3], [1, 2, 9], [4]], [[8], [8], [9]]])
  np.testing.assert_array_equal(idx, [[-1, 3, -1], [4, -1, 5]])
  np.testing.assert_array_equal(tree.children[0, 0], [1, 2, 3])
  np.testing.assert_array_equal(tree.children[1, 1], [4, 5, -1])
  np.testing.assert_array_equal(tree.depth[1, 4:6], [2, 2])
  np.testing.assert_array_equal(tree.step_tokens[0, 3], [1, 2, 9, 0])


def test_add_children_respects_validity_and_node_capacity():
  tree = _tree(slots=4)
  tree, idx = _add(tree, [0, 0], [[[1], [2], [3]], [[1], [2], [3]]],
                   valid=[[True, False, True], [False, False, False]])
  np.testing.assert_array_equal(idx, [[1, -1, 2], [-1, -1, -1]])
  tree, idx = _add(tree, [1, 0], [[[4], [5], [6]], [[4], [5], [6]]])
  # Tree 0 has one free node slot left; tree 1 has three.
  np.testing.assert_array_equal(idx, [[3, -1, -1], [1, 2, 3]])
  np.testing.assert_array_equal(tree.num_nodes, [4, 4])


def test_root_paths_and_gather_prefix():
  tree = _tree()
  tree, _ = _add(tree, [0, 0], [[[1, 2], [3], [4]], [[5], [6, 6, 6], [7]]])
  tree, _ = _add(tree, [2, 2], [[[8, 8, 8, 8], [9], [7]], [[1], [2], [3]]])
  paths = tree_lib.root_paths(tree, max_depth=3)
  np.testing.assert_array_equal(paths[0, 4], [0, 2, 4, -1])
  np.testing.assert_array_equal(paths[1, 2], [0, 2, -1, -1])
  tokens, lengths = tree_lib.gather_prefix(tree, jnp.array([4, 5]),
                                           max_depth=3, max_len=12)
  np.testing.assert_array_equal(lengths, [8, 6])
  np.testing.assert_array_equal(tokens[0], [11, 12, 13, 3, 8, 8, 8, 8, 0, 0, 0, 0])
  np.testing.assert_array_equal(tokens[1], [21, 22, 6, 6, 6, 2, 0, 0, 0, 0, 0, 0])
  # The root's prefix is the question; truncation keeps the first tokens.
  tokens, lengths = tree_lib.gather_prefix(tree, jnp.array([0, 5]),
                                           max_depth=3, max_len=4)
  np.testing.assert_array_equal(lengths, [3, 4])
  np.testing.assert_array_equal(tokens, [[11, 12, 13, 0], [21, 22, 6, 6]])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.lists(
    st.lists(st.integers(1, 3), min_size=1, max_size=2), min_size=3,
    max_size=3)), min_size=1, max_size=8))
def test_random_expansions_keep_a_well_formed_tree(expansions):
  tree = _tree(batch=1, slots=10)
  add = jax.jit(tree_lib.add_children)
  for node, steps in expansions:
    node = min(node, int(tree.num_nodes[0]) - 1)
    tokens, lengths = _steps(steps)
    tree, _ = add(tree, jnp.array([node]), tokens, lengths,
                  jnp.full((1, 3), 0.5), jnp.zeros((1, 3), bool),
                  jnp.ones((1, 3), bool))
  n = int(tree.num_nodes[0])
  parent, depth = np.asarray(tree.parent[0]), np.asarray(tree.depth[0])
  children = np.asarray(tree.children[0])
  assert n <= 10
  for i in range(1, n):
    assert 0 <= parent[i] < i  # parents come first: no cycles
    assert depth[i] == depth[parent[i]] + 1
    assert i in children[parent[i]]
  for i in range(n):
    kids = [c for c in children[i] if c >= 0]
    assert all(parent[c] == i for c in kids)
    steps = {tuple(np.asarray(tree.step_tokens[0, c, :tree.step_len[0, c]]))
             for c in kids}
    assert len(steps) == len(kids)  # identical sibling steps were merged
  assert np.all(children[n:] == -1) and np.all(parent[n:] == -1)
