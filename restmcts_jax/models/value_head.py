"""Process reward model: a sigmoid value head on a decoder backbone.

`V(p) = sigmoid(w · h_last + b)` where `h_last` is the backbone's final hidden
state at the last real token of the partial solution `p`. The backbone is
either a model of its own or the policy itself (shared): with a shared
backbone the sampler's `last_hidden` already holds `h_last` for every newly
sampled step, so scoring a child costs no extra forward pass.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from restmcts_jax.models import transformer as transformer_lib

Array = jax.Array


def last_hidden(backbone: transformer_lib.Transformer, tokens: Array,
                lengths: Array) -> Array:
  """`[B, E]` the backbone's hidden state at each row's last real token, of
  right-padded `tokens [B, T]` with `lengths [B]`: what a value head reads."""
  hidden, _ = backbone.hidden(tokens, transformer_lib.default_positions(tokens))
  return transformer_lib.last_token_hidden(hidden, lengths)


class ValueHead(nnx.Module):
  """Linear map `[..., E] -> [...]` followed by a sigmoid, in f32."""

  def __init__(self, embed_dim: int, *, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.kernel = transformer_lib.annotated_param(
        rngs, param_dtype, nnx.initializers.zeros_init(), (embed_dim,),
        ("embed",))
    self.bias = nnx.Param(jnp.zeros((), param_dtype))

  def __call__(self, hidden: Array) -> Array:
    """Values in (0, 1), `[...]`, from hidden states `[..., E]`."""
    return jax.nn.sigmoid(self.logits(hidden))

  def logits(self, hidden: Array) -> Array:
    """The values before the sigmoid, `[...]`, from `[..., E]`."""
    score = hidden.astype(jnp.float32) @ self.kernel[...].astype(jnp.float32)
    return score + self.bias[...].astype(jnp.float32)


class ValueModel(nnx.Module):
  """Backbone + value head. Pass the policy as `backbone` to share it."""

  def __init__(self, backbone: transformer_lib.Transformer, *, rngs: nnx.Rngs):
    self.backbone = backbone
    self.head = ValueHead(backbone.config.embed_dim,
                          param_dtype=backbone.config.param_dtype, rngs=rngs)

  def __call__(self, tokens: Array, lengths: Array) -> Array:
    """Values `[B]` of right-padded partial solutions `tokens [B, T]`.

    Args:
      tokens: question + steps, right-padded, `[B, T]`.
      lengths: real lengths `[B]` (>= 1); the head reads token `lengths - 1`.
    """
    return jax.nn.sigmoid(self.logits(tokens, lengths))

  def logits(self, tokens: Array, lengths: Array) -> Array:
    """`[B]` the values before the sigmoid (arguments as `__call__`)."""
    return self.head.logits(last_hidden(self.backbone, tokens, lengths))

  def score_continuations(
      self,
      prefix: Array,
      lengths: Array,
      steps: Array,
      step_lengths: Array,
      num_samples: int,
  ) -> Array:
    """Values of `num_samples` continuations of each prefix, `[R * k]`.

    Equals `self(prefix + step)` row by row, but each prefix is encoded once
    and its KV cache shared by its continuations, which then encode only
    their own step tokens.

    Args:
      prefix: `[R, P]` right-padded partial solutions.
      lengths: `[R]` their lengths (>= 1).
      steps: `[R * k, S]` continuation `j` of prefix `i` in row `i * k + j`.
      step_lengths: `[R * k]` (>= 1).
      num_samples: k.
    """
    cache = transformer_lib.KVCache.zeros(self.backbone.config, *prefix.shape)
    _, cache = self.backbone.hidden(
        prefix, transformer_lib.default_positions(prefix), cache)
    return self.score_from_cache(cache, lengths, steps, step_lengths,
                                 num_samples)[0]

  def score_from_cache(
      self,
      cache: transformer_lib.KVCache,
      lengths: Array,
      steps: Array,
      step_lengths: Array,
      num_samples: int,
  ) -> tuple[Array, transformer_lib.KVCache]:
    """`score_continuations` for prefixes already in this backbone's cache
    (`[R]` rows); the continuations share their prefix's cache
    (`transformer.PrefixedCache`).

    Returns:
      Values `[R * k]` and the steps' own keys/values, `[R * k, K, S, D]` per
      layer (slot `s` holds position `lengths + s`).
    """
    n, s = steps.shape
    step_cache = transformer_lib.KVCache.zeros(self.backbone.config, n, s)
    positions = jnp.repeat(lengths, num_samples)[:, None] + jnp.arange(s)
    cache = transformer_lib.PrefixedCache.create(cache, lengths, step_cache, 0)

    def padded():
      hidden, out = self.backbone.hidden(steps, positions, cache)
      return (transformer_lib.last_token_hidden(hidden, step_lengths),
              out.steps)

    def packed(capacity):
      rows, slots = transformer_lib.pack_rows(step_lengths, capacity)
      real = jnp.minimum(rows, n - 1)
      hidden, out = self.backbone.hidden(
          steps[real, slots][None], positions[real, slots][None],
          cache.replace(token_rows=rows, token_slots=slots))
      return hidden[0, jnp.cumsum(step_lengths) - 1], out.steps

    # Steps are often much shorter than S: encode only their real tokens,
    # packed into the smallest of a few fixed capacities that holds them.
    capacities = sorted(c for c in {8 * math.ceil(n * s * f / 8)
                                    for f in (0.25, 0.5, 0.75)} if c < n * s)
    hidden, steps_cache = transformer_lib.run_packed(
        jnp.sum(step_lengths), capacities, packed, padded)
    return self.head(hidden), steps_cache


def make_value_model(
    policy: transformer_lib.Transformer,
    *,
    share_backbone: bool,
    rngs: nnx.Rngs,
) -> ValueModel:
  """A value model on the policy's own backbone, or on a copy of it
  (`share_backbone=False`): the process reward model starts from the policy's
  weights either way; only the head is new."""
  if share_backbone:
    return ValueModel(policy, rngs=rngs)
  backbone = nnx.clone(policy)
  # Own buffers, not views of the policy's: either model's train step donates
  # its parameters.
  nnx.update(backbone, jax.tree.map(jnp.copy, nnx.state(backbone)))
  return ValueModel(backbone, rngs=rngs)
