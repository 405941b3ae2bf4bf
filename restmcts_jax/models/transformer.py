"""Decoder-only LM of the Llama / Qwen2 / Mistral family, in Flax NNX.

RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU MLP,
optional QKV bias (Qwen2), tied or untied embeddings, separate parameter and
compute dtypes. Every parameter carries logical axis names (see
`training/sharding.py`) so a rules table can shard it.

Padding convention: rows are RIGHT-padded and a token's position is its slot
index, so slot `s` of the KV cache holds the token at position `s`. A query at
position `p` attends to cache slots `<= p`; slots past a row's end hold stale
or padding entries that no real query can see. Padded queries compute garbage
that callers ignore.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from restmcts_jax.training import sharding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture and dtypes. Frozen, so it can be a static jit argument."""

  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  # Llama-3 frequency scaling: (factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings), or None for plain RoPE.
  rope_llama3_scaling: tuple[float, float, float, int] | None = None
  norm_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2: bias on q/k/v projections.
  out_bias: bool = False  # Llama `attention_bias=True` also biases o_proj.
  tie_embeddings: bool = False
  param_dtype: Any = jnp.float32
  dtype: Any = jnp.float32  # compute dtype; norms and softmax run in f32.

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.num_kv_heads}"
      )


@struct.dataclass
class KVCache:
  """Keys and values of every layer, slot = position.

  Attributes:
    k: per layer `[B, num_kv_heads, S, head_dim]`.
    v: per layer `[B, num_kv_heads, S, head_dim]`.

  Heads before slots, so attention over the cache is a plain batched matmul
  with no transpose of the cache.
  """

  k: tuple[Array, ...]
  v: tuple[Array, ...]

  @classmethod
  def zeros(cls, config: TransformerConfig, batch: int, length: int):
    shape = (batch, config.num_kv_heads, length, config.head_dim)
    # Distinct buffers for every layer and for k and v, so they can be donated.
    zeros = lambda: tuple(
        jnp.zeros(shape, config.dtype) for _ in range(config.num_layers))
    return cls(k=zeros(), v=zeros())


@struct.dataclass
class PrefixedCache:
  """Prefixes shared by `k` continuations each (sampling or scoring several
  steps after one partial solution): the prefixes' keys/values are read once
  per prefix instead of once per continuation.

  Build it with `PrefixedCache.create`.

  Attributes:
    prefix: read-only cache of R prefixes (slot = position): keys
      `[R, K, D, W]` (transposed: a decode step's query-key product then runs
      over contiguous slots, ~2x faster on CPU), values `[R, K, W, D]`; slots
      from `prefix_lengths` on are not attended to.
    prefix_lengths: `[R]`.
    steps: the continuations' own keys/values, `[R * k, K, S, D]` per layer;
      row `i * k + j` continues prefix `i`, and its slot `s` holds position
      `prefix_lengths[i] + s`.
    step_start: scalar, the step slot of the first new token (every row
      writes the same slots).
    token_rows, token_slots: set for packed tokens: the input is then one
      sequence of C tokens, token c belonging to continuation `token_rows[c]`
      (row indices past the last continuation are padding). With
      `token_slots` (`pack_rows`), token c sits at step slot `token_slots[c]`
      and `step_start` must be 0; without, each listed continuation gets one
      token, at slot `step_start` (a decode step of the rows still going).
  """

  prefix: KVCache
  prefix_lengths: Array
  steps: KVCache
  step_start: Array
  token_rows: Array | None = None
  token_slots: Array | None = None

  @classmethod
  def create(cls, prefix: KVCache, prefix_lengths: Array, steps: KVCache,
             step_start) -> "PrefixedCache":
    """From a prefix cache in the usual `[R, K, W, D]` layout."""
    keys = tuple(k.transpose(0, 1, 3, 2) for k in prefix.k)
    return cls(KVCache(k=keys, v=prefix.v), prefix_lengths, steps,
               jnp.asarray(step_start, jnp.int32))

  def layer(self, i: int) -> "PrefixedCache":
    """This cache restricted to layer `i`."""
    pick = lambda c: KVCache(k=(c.k[i],), v=(c.v[i],))
    return self.replace(prefix=pick(self.prefix), steps=pick(self.steps))


def pack_rows(lengths: Array, capacity: int) -> tuple[Array, Array]:
  """Where each token of right-padded rows goes when they are packed into one
  sequence of `capacity` tokens: `(rows [C], slots [C])`, token c being token
  `slots[c]` of row `rows[c]`; past the rows' total length, `rows` is the row
  count and `slots` 0 (padding)."""
  ends = jnp.cumsum(lengths)
  token = jnp.arange(capacity)
  rows = jnp.searchsorted(ends, token, side="right")
  padding = rows >= lengths.shape[0]
  starts = (ends - lengths)[jnp.where(padding, 0, rows)]
  return rows, jnp.where(padding, 0, token - starts)


def run_packed(count: Array, capacities, packed, padded):
  """`packed(c)` for the smallest capacity `c` in the ascending
  `capacities` that holds `count` tokens, else `padded()` (`lax.switch`:
  every branch is compiled, one runs)."""
  branches = [functools.partial(packed, c) for c in capacities] + [padded]
  index = jnp.sum(count > jnp.array(capacities, jnp.int32))
  return jax.lax.switch(index, branches)


def annotated_param(rngs, dtype, init, shape, names):
  """A parameter annotated with logical axis names.

  The sharding is applied eagerly only inside a mesh; off-mesh the names are
  kept as metadata for `nnx.get_partition_spec`.
  """
  return nnx.Param(
      init(rngs.params(), shape, dtype),
      out_sharding=tuple(names),
      eager_sharding=sharding.mesh_is_set(),
  )


_normal = nnx.initializers.normal(0.02)
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


class RMSNorm(nnx.Module):
  """y = x / rms(x) * scale, computed in f32 (as the HF reference does)."""

  def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = annotated_param(rngs, param_dtype, _ones, (dim,), ("embed",))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32**2, -1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * x32.astype(x.dtype)


def rope_inv_freq(config: TransformerConfig) -> Array:
  """Inverse frequencies `[head_dim // 2]` (with Llama-3 scaling if set)."""
  d = config.head_dim
  inv_freq = 1.0 / (
      config.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
  )
  if config.rope_llama3_scaling is None:
    return inv_freq
  factor, low_ff, high_ff, old_len = config.rope_llama3_scaling
  wavelen = 2 * math.pi / inv_freq
  low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
  smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
  smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  return jnp.where(
      wavelen > low_wavelen,
      inv_freq / factor,
      jnp.where(wavelen < high_wavelen, inv_freq, smoothed),
  )


def rope_tables(positions: Array, inv_freq: Array) -> tuple[Array, Array]:
  """cos, sin `[B, T, head_dim]` for `positions [B, T]` (half-split layout)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates `x [B, T, heads, head_dim]` (HF `rotate_half` convention)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
  return out.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query attention with an optional slot-indexed KV cache."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    p = functools.partial(annotated_param, rngs, c.param_dtype)
    self.q_proj = p(_normal, (c.embed_dim, c.num_heads, c.head_dim),
                    ("embed", "heads", "head_dim"))
    self.k_proj = p(_normal, (c.embed_dim, c.num_kv_heads, c.head_dim),
                    ("embed", "kv_heads", "head_dim"))
    self.v_proj = p(_normal, (c.embed_dim, c.num_kv_heads, c.head_dim),
                    ("embed", "kv_heads", "head_dim"))
    self.o_proj = p(_normal, (c.num_heads, c.head_dim, c.embed_dim),
                    ("heads", "head_dim", "embed"))
    if c.qkv_bias:
      self.q_bias = p(_zeros, (c.num_heads, c.head_dim), ("heads", "head_dim"))
      self.k_bias = p(_zeros, (c.num_kv_heads, c.head_dim),
                      ("kv_heads", "head_dim"))
      self.v_bias = p(_zeros, (c.num_kv_heads, c.head_dim),
                      ("kv_heads", "head_dim"))
    if c.out_bias:
      self.o_bias = p(_zeros, (c.embed_dim,), ("embed",))

  def _project(self, x, kernel, bias_name):
    dtype = self.config.dtype
    e, heads, d = kernel.shape
    # A 2-D matmul (see MLP): its weight gradient has one contracting dim.
    y = x.reshape(-1, e) @ kernel[...].astype(dtype).reshape(e, heads * d)
    y = y.reshape(*x.shape[:-1], heads, d)
    if self.config.qkv_bias:
      y = y + getattr(self, bias_name)[...].astype(dtype)
    return y

  def __call__(
      self,
      x: Array,
      positions: Array,
      rope: tuple[Array, Array],
      kv: "tuple[Array, Array] | PrefixedCache | None",
  ) -> tuple[Array, "tuple[Array, Array] | PrefixedCache | None"]:
    """Attends `x [B, T, E]` at `positions [B, T]`.

    With `kv = (k [B, K, S, D], v [B, K, S, D])` the new keys/values are
    written into their position slots (a row's T positions are consecutive) and the queries attend over all slots;
    without it, over the T new tokens only. With a one-layer `PrefixedCache`
    the rows are continuations of shared prefixes (`_attend_after_prefix`)
    and the returned cache is that `PrefixedCache` with their step slots.
    """
    c = self.config
    q = apply_rope(self._project(x, self.q_proj, "q_bias"), *rope)
    k = apply_rope(self._project(x, self.k_proj, "k_bias"), *rope)
    v = self._project(x, self.v_proj, "v_bias")
    q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))

    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, D]
    if isinstance(kv, PrefixedCache):
      attend = (self._attend_after_prefix if kv.token_rows is None
                else self._attend_packed)
      out, kv = attend(q, k, v, kv)
      return self._output(out), kv
    if kv is None:
      keys, values, key_positions = k, v, positions
    else:
      write = jax.vmap(
          lambda cache, new, start: jax.lax.dynamic_update_slice(
              cache, new.astype(cache.dtype), (0, start, 0)))
      keys = write(kv[0], k, positions[:, 0])
      values = write(kv[1], v, positions[:, 0])
      key_positions = jnp.broadcast_to(
          jnp.arange(keys.shape[2]), (x.shape[0], keys.shape[2]))
      kv = (keys, values)

    # Queries of one kv head, all its group's heads and all T positions, form
    # the rows of one batched matmul against that head's keys.
    b, t = q.shape[:2]
    groups = c.num_heads // c.num_kv_heads
    q = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim)
    q = q.transpose(0, 2, 3, 1, 4).reshape(b, c.num_kv_heads, groups * t, -1)
    logits = jnp.einsum("bkmd,bksd->bkms", q, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(c.head_dim)
    logits = logits.reshape(b, c.num_kv_heads, groups, t, -1)
    visible = key_positions[:, None, :] <= positions[:, :, None]  # [B, T, S]
    logits = jnp.where(visible[:, None, None], logits,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(c.dtype)
    probs = probs.reshape(b, c.num_kv_heads, groups * t, -1)
    out = jnp.einsum("bkms,bksd->bkmd", probs, values.astype(c.dtype))
    out = out.reshape(b, c.num_kv_heads, groups, t, c.head_dim)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, c.num_heads, c.head_dim)
    return self._output(out), kv

  def _output(self, out: Array) -> Array:
    """`[B, T, E]` from the heads' outputs `[B, T, H, D]`."""
    c = self.config
    b, t = out.shape[:2]
    y = out.reshape(b * t, -1) @ self.o_proj[...].astype(c.dtype).reshape(
        -1, c.embed_dim)
    y = y.reshape(b, t, c.embed_dim)
    if c.out_bias:
      y = y + self.o_bias[...].astype(c.dtype)
    return y

  def _attend_packed(self, q, k, v, kv: PrefixedCache):
    """`_attend_after_prefix` for packed tokens (`q [1, C, H, D]`,
    `k, v [1, K, C, D]`): attention runs in the continuations' padded layout
    `[R * k, T]` (T = S, or 1 for a decode step), the projections and MLP on
    the packed tokens only."""
    n, _, s, _ = kv.steps.k[0].shape
    rows, slots = kv.token_rows, kv.token_slots
    if slots is None:  # one token per listed row, at slot `step_start`
      s, slots = 1, jnp.zeros_like(rows)
    def unpack(x):  # [C, ...] -> [R * k, T, ...]
      return jnp.zeros((n, s) + x.shape[1:], x.dtype).at[rows, slots].set(
          x, mode="drop")
    unpack_kv = lambda x: unpack(x[0].transpose(1, 0, 2)).transpose(0, 2, 1, 3)
    out, kv = self._attend_after_prefix(unpack(q[0]), unpack_kv(k),
                                        unpack_kv(v), kv)
    return out.at[rows, slots].get(mode="fill", fill_value=0)[None], kv

  def _attend_after_prefix(self, q, k, v, kv: PrefixedCache):
    """Attention of continuation rows over their shared prefix and their own
    step slots (one softmax over both).

    Args:
      q: `[R * k, T, H, D]` rotated queries.
      k, v: `[R * k, K, T, D]` the new tokens' keys/values.
      kv: a one-layer `PrefixedCache`.

    Returns:
      `[R * k, T, H, D]` and the cache with the new keys/values in their step
      slots.
    """
    c = self.config
    n, t = q.shape[:2]
    r = kv.prefix_lengths.shape[0]
    k_per = n // r  # continuations per prefix
    heads, groups, d = c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim
    write = lambda cache, new: jax.lax.dynamic_update_slice(
        cache, new.astype(cache.dtype), (0, 0, kv.step_start, 0))
    step_k, step_v = write(kv.steps.k[0], k), write(kv.steps.v[0], v)
    prefix_k, prefix_v = kv.prefix.k[0], kv.prefix.v[0]
    width, step_len = prefix_k.shape[3], step_k.shape[2]
    low = jnp.finfo(jnp.float32).min
    q = q.reshape(r, k_per, t, heads, groups, d)

    # Prefix: every continuation's queries of one prefix and kv head form the
    # rows of one matmul, so the prefix is read once, not k times.
    qp = q.transpose(0, 3, 1, 4, 2, 5).reshape(r, heads, k_per * groups * t, d)
    prefix_logits = jnp.einsum("rkmd,rkdw->rkmw", qp, prefix_k.astype(q.dtype),
                               preferred_element_type=jnp.float32)
    prefix_logits = prefix_logits / math.sqrt(d)
    seen = jnp.arange(width) < kv.prefix_lengths[:, None]  # [R, W]
    prefix_logits = jnp.where(seen[:, None, None], prefix_logits, low)
    prefix_logits = prefix_logits.reshape(r, heads, k_per, groups, t, width)

    # Own step: causal over the step slots.
    qs = q.reshape(n, t, heads, groups, d).transpose(0, 2, 3, 1, 4)
    step_logits = jnp.einsum("nkgtd,nksd->nkgts", qs, step_k.astype(q.dtype),
                             preferred_element_type=jnp.float32)
    step_logits = step_logits / math.sqrt(d)
    query_slot = kv.step_start + jnp.arange(t)
    causal = jnp.arange(step_len)[None, :] <= query_slot[:, None]  # [T, S]
    step_logits = jnp.where(causal, step_logits, low)
    step_logits = step_logits.reshape(r, k_per, heads, groups, t, step_len
                                      ).transpose(0, 2, 1, 3, 4, 5)

    probs = jax.nn.softmax(
        jnp.concatenate([prefix_logits, step_logits], -1), axis=-1
    ).astype(c.dtype)  # [R, K, k, G, T, W + S]
    prefix_probs = probs[..., :width].reshape(
        r, heads, k_per * groups * t, width)
    # Both parts summed in f32, rounded to the compute dtype once.
    out = jnp.einsum("rkmw,rkwd->rkmd", prefix_probs,
                     prefix_v.astype(c.dtype),
                     preferred_element_type=jnp.float32)
    out = out.reshape(r, heads, k_per, groups, t, d)
    step_probs = probs[..., width:].transpose(0, 2, 1, 3, 4, 5).reshape(
        n, heads, groups, t, step_len)
    own = jnp.einsum("nkgts,nksd->nkgtd", step_probs, step_v.astype(c.dtype),
                     preferred_element_type=jnp.float32)
    out = out + own.reshape(r, k_per, heads, groups, t, d).transpose(
        0, 2, 1, 3, 4, 5)
    out = out.transpose(0, 2, 4, 1, 3, 5).reshape(n, t, c.num_heads, d)
    out = out.astype(c.dtype)
    steps = KVCache(k=(step_k,), v=(step_v,))
    return out, kv.replace(steps=steps)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.dtype = c.dtype
    p = functools.partial(annotated_param, rngs, c.param_dtype)
    self.gate_proj = p(_normal, (c.embed_dim, c.mlp_dim), ("embed", "mlp"))
    self.up_proj = p(_normal, (c.embed_dim, c.mlp_dim), ("embed", "mlp"))
    self.down_proj = p(_normal, (c.mlp_dim, c.embed_dim), ("mlp", "embed"))

  def __call__(self, x: Array) -> Array:
    # Rows flattened to 2-D: XLA:CPU runs the weight gradient of a 3-D
    # matmul (two contracting dimensions) much slower.
    rows = x.reshape(-1, x.shape[-1])
    gate = rows @ self.gate_proj[...].astype(self.dtype)
    up = rows @ self.up_proj[...].astype(self.dtype)
    h = (jax.nn.silu(gate) * up).reshape(*x.shape[:-1], -1)
    h = sharding.constrain(h, ("batch", "length", "mlp"))
    out = h.reshape(rows.shape[0], -1) @ self.down_proj[...].astype(self.dtype)
    return out.reshape(x.shape)


class DecoderLayer(nnx.Module):
  """Pre-norm residual block: attention, then MLP."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.input_norm = RMSNorm(c.embed_dim, c.norm_eps,
                              param_dtype=c.param_dtype, rngs=rngs)
    self.attn = Attention(c, rngs=rngs)
    self.post_attn_norm = RMSNorm(c.embed_dim, c.norm_eps,
                                  param_dtype=c.param_dtype, rngs=rngs)
    self.mlp = MLP(c, rngs=rngs)

  def __call__(self, x, positions, rope, kv):
    h, kv = self.attn(self.input_norm(x), positions, rope, kv)
    x = x + h
    x = x + self.mlp(self.post_attn_norm(x))
    return sharding.constrain(x, ("batch", "length", None)), kv


class Transformer(nnx.Module):
  """The decoder LM. `__call__` gives logits; `hidden` the final hidden states.

  Use it functionally under `jit`: `graphdef, state = nnx.split(model)` once,
  `nnx.merge(graphdef, state)` inside the jitted function.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    p = functools.partial(annotated_param, rngs, c.param_dtype)
    self.embedding = p(_normal, (c.vocab_size, c.embed_dim), ("vocab", "embed"))
    self.layers = nnx.List(
        [DecoderLayer(c, rngs=rngs) for _ in range(c.num_layers)]
    )
    self.final_norm = RMSNorm(c.embed_dim, c.norm_eps,
                              param_dtype=c.param_dtype, rngs=rngs)
    if not c.tie_embeddings:
      self.lm_head = p(_normal, (c.embed_dim, c.vocab_size), ("embed", "vocab"))

  def hidden(
      self,
      tokens: Array,
      positions: Array,
      cache: KVCache | PrefixedCache | None = None,
  ) -> tuple[Array, KVCache | PrefixedCache | None]:
    """Final-normed hidden states `[B, T, E]` for `tokens [B, T]`.

    Args:
      tokens: token ids `[B, T]`, right-padded.
      positions: position of each token `[B, T]` (the slot in a `KVCache`).
      cache: optional KV cache; the new tokens' keys/values are written into
        their slots and the returned cache holds them. With a
        `PrefixedCache`, B = R * k continuations, each attending over its
        prefix and its own step slots.
    """
    c = self.config
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(c.dtype)
    x = sharding.constrain(x, ("batch", "length", None))
    rope = rope_tables(positions, rope_inv_freq(c))
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      if cache is None:
        kv = None
      elif isinstance(cache, PrefixedCache):
        kv = cache.layer(i)
      else:
        kv = (cache.k[i], cache.v[i])
      x, kv = layer(x, positions, rope, kv)
      if isinstance(kv, PrefixedCache):
        kv = (kv.steps.k[0], kv.steps.v[0])
      if kv is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    x = self.final_norm(x)
    if cache is None:
      return x, None
    new_cache = KVCache(tuple(new_k), tuple(new_v))
    if isinstance(cache, PrefixedCache):
      new_cache = cache.replace(steps=new_cache)
    return x, new_cache

  def logits(self, hidden: Array) -> Array:
    """f32 logits `[..., vocab]` from hidden states `[..., E]`."""
    c = self.config
    if c.tie_embeddings:
      kernel = self.embedding[...].astype(c.dtype).T
    else:
      kernel = self.lm_head[...].astype(c.dtype)
    return jnp.matmul(hidden, kernel, preferred_element_type=jnp.float32)

  def __call__(self, tokens, positions, cache=None):
    """Returns `(logits [B, T, V], hidden [B, T, E], cache)`."""
    hidden, cache = self.hidden(tokens, positions, cache)
    return self.logits(hidden), hidden, cache


def last_token_hidden(hidden: Array, lengths: Array) -> Array:
  """`[B, E]` hidden state at each right-padded row's last real token."""
  return jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], 1)[:, 0]


def default_positions(tokens: Array) -> Array:
  """Positions `[B, T]` = 0..T-1 for right-padded rows."""
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
