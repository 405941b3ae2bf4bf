"""Per-node KV caches: every node keeps the keys/values of its own step.

A node's prefix (question + the steps on its root path) never changes, and
neither do the keys/values a model computes for it (RoPE is applied at fixed
absolute positions). So each tree keeps, per model,
  * the question's cache, `[B, K, Q, D]` per layer, and
  * each node's step slice, `[B, N, K, S, D]` per layer,
and the cache of any node's whole prefix is assembled by a gather, in place of
re-encoding the prefix: a child costs only its own step's tokens.
"""

import jax
import jax.numpy as jnp

from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.search import tree as tree_lib

Array = jax.Array
KVCache = transformer_lib.KVCache


def empty_steps(config: transformer_lib.TransformerConfig, tree: tree_lib.Tree
                ) -> KVCache:
  """Zero step slices `[B, N, K, S, D]` per layer for `tree`'s nodes."""
  shape = (tree.batch_size, tree.num_slots, config.num_kv_heads,
           tree.max_step_len, config.head_dim)
  zeros = lambda: tuple(jnp.zeros(shape, config.dtype)
                        for _ in range(config.num_layers))
  return KVCache(k=zeros(), v=zeros())


def assemble(
    tree: tree_lib.Tree,
    question: KVCache,
    steps: KVCache,
    node: Array,
    *,
    max_depth: int,
    width: int,
) -> tuple[KVCache, Array]:
  """The cache of each `node [B]`'s whole prefix, `[B, K, width, D]` per
  layer (slot = position, zeros past the prefix), and the prefix lengths."""
  def sources(t, n):
    return tree_lib.prefix_sources(t, n, max_depth, width)
  from_question, step_node, offset, valid, total = jax.vmap(sources)(
      tree, node)
  q_len, s_len = question.k[0].shape[2], tree.max_step_len

  def gather(q, s):  # one layer: q [K, Q, D], s [N, K, S, D]
    def one(q, s, from_q, src, off, ok):
      from_question_kv = q[:, jnp.clip(off, 0, q_len - 1)]
      from_step_kv = s[src, :, jnp.clip(off, 0, s_len - 1)]  # [W, K, D]
      out = jnp.where(from_q[None, :, None], from_question_kv,
                      from_step_kv.transpose(1, 0, 2))
      return jnp.where(ok[None, :, None], out, 0)
    return jax.vmap(one)(q, s, from_question, step_node, offset, valid)

  cache = KVCache(k=tuple(map(gather, question.k, steps.k)),
                  v=tuple(map(gather, question.v, steps.v)))
  return cache, jnp.minimum(total, width)


def insert(cache: KVCache, starts: Array, steps: KVCache) -> KVCache:
  """`cache [R, K, W, D]` per layer with `steps [R, K, S, D]` written from
  slot `starts [R]` on (a prefix extended by one step)."""
  def one(c, s, start):
    return jax.lax.dynamic_update_slice(c, s.astype(c.dtype), (0, start, 0))
  return jax.tree.map(lambda c, s: jax.vmap(one)(c, s, starts), cache, steps)


def store(per_node, new_index: Array, new):
  """Writes `new` (leaves `[B * k, ...]`) into the entries of nodes
  `new_index [B, k]` of `per_node` (leaves `[B, N, ...]`, e.g. step slices);
  NO_CHILD entries are dropped."""
  b, k = new_index.shape
  num_slots = jax.tree.leaves(per_node)[0].shape[1]
  target = jnp.where(new_index == tree_lib.NO_CHILD, num_slots, new_index)

  def write(layer, new):
    new = new.reshape(b, k, *new.shape[1:])
    return jax.vmap(lambda l, t, x: l.at[t].set(x, mode="drop"))(
        layer, target, new)
  return jax.tree.map(write, per_node, new)
