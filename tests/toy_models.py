"""A deterministic toy policy and value model over token ids, in JAX.

Both are functions of a hash of the prefix (question + steps), so a search
driven by them can be replayed exactly by a plain-Python transcription:
  hash:   h = 7; for x in prefix: h = (h * 31 + x) % 10007
  policy: proposal j is t = 1 + ((h * 17 + j * 131 + h // 7) % 5); the step is
          [t] if t is odd else [t, t]; it is final iff t == 5
  value:  ((h * 7919) % 1009) / 1009
"""

import jax
import jax.numpy as jnp

from restmcts_jax.search import mcts_star

MAX_STEP_LEN = 2


def prefix_hash(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
  """`[R]` hash of each right-padded row of `tokens [R, L]`."""
  def body(i, h):
    return jnp.where(i < lengths, (h * 31 + tokens[:, i]) % 10007, h)
  return jax.lax.fori_loop(0, tokens.shape[1], body,
                           jnp.full(tokens.shape[:1], 7, jnp.int32))


def policy_fn(prefix, lengths, keys, num_samples) -> mcts_star.Proposals:
  del keys  # deterministic
  h = jnp.repeat(prefix_hash(prefix, lengths), num_samples)
  j = jnp.tile(jnp.arange(num_samples), prefix.shape[0])
  t = 1 + (h * 17 + j * 131 + h // 7) % 5
  odd = t % 2 == 1
  tokens = jnp.stack([t, jnp.where(odd, 0, t)], axis=1).astype(jnp.int32)
  return mcts_star.Proposals(tokens=tokens, lengths=jnp.where(odd, 1, 2),
                             is_final=t == 5)


def score(tokens, lengths) -> jax.Array:
  h = prefix_hash(tokens, lengths)
  return ((h * 7919) % 1009).astype(jnp.float32) / 1009.0


value_fn = mcts_star.concat_value_fn(score)
MODELS = mcts_star.TokenModels(policy_fn, value_fn)
