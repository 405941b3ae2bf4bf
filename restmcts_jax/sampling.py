"""Jit-compiled sampler of ONE reasoning step for a batch of prefixes.

A step is the text up to a step delimiter (e.g. a newline). The sampler
prefills the right-padded prefixes into a KV cache, then decodes one token per
row per iteration of a `lax.while_loop` until every row has produced its step:
it stops at a delimiter, at EOS, or at `max_step_len` tokens.

The samples of one prefix share its cache (`transformer.PrefixedCache`); each
writes only its own step's slots. The last token of every step is fed through
the model once more, so that
  * the returned step slices hold the keys/values of the whole step (a child
    node can continue from them), and
  * `last_hidden` is the hidden state at the step's last token, which is what
    a value head on the policy's backbone reads: no extra forward pass.

Randomness comes from one key per row, folded with the token index, so a row's
sample does not depend on which other rows share its batch (up to rounding:
matmuls over different row counts, e.g. when finished rows are packed out of
a decode step, may round differently on some backends).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from restmcts_jax.models import transformer as transformer_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to sample a step. Frozen: a static jit argument.

  Attributes:
    max_step_len: most tokens in one step (the stop token included).
    temperature: 0 means greedy.
    top_k: keep the k most likely tokens (0: off).
    top_p: nucleus sampling threshold (1.0: off).
    stop_token_ids: step delimiters (e.g. the newline token); kept in the step.
    eos_token_id: end of the whole solution; kept in the step.
    answer_marker_ids: a step that starts with these tokens is final (carries
      the answer), as is a step that ends with EOS. Empty: EOS only.
    decode_buckets: a decode step runs the model on the rows still
      generating only, packed into the smallest of `decode_buckets` equal
      fractions of the batch that holds them (1: every row, every step).
      Steps end at different lengths, and the rows already done would
      otherwise cost as much as the others until the longest step ends.
  """

  max_step_len: int = 32
  temperature: float = 0.7
  top_k: int = 0
  top_p: float = 1.0
  stop_token_ids: tuple[int, ...] = ()
  eos_token_id: int | None = None
  answer_marker_ids: tuple[int, ...] = ()
  decode_buckets: int = 4

  def __post_init__(self):
    problems = []
    if self.decode_buckets < 1:
      problems.append(f"decode_buckets={self.decode_buckets} must be >= 1")
    if self.max_step_len < 1:
      problems.append(f"max_step_len={self.max_step_len} must be >= 1")
    if self.temperature < 0:
      problems.append(f"temperature={self.temperature} must be >= 0")
    if self.top_k < 0:
      problems.append(f"top_k={self.top_k} must be >= 0")
    if not 0 < self.top_p <= 1:
      problems.append(f"top_p={self.top_p} must be in (0, 1]")
    if len(self.answer_marker_ids) > self.max_step_len:
      problems.append(
          f"answer_marker_ids has {len(self.answer_marker_ids)} tokens, more "
          f"than max_step_len={self.max_step_len}")
    if problems:
      raise ValueError("SamplerConfig: " + "; ".join(problems))

  @property
  def end_token_ids(self) -> tuple[int, ...]:
    eos = () if self.eos_token_id is None else (self.eos_token_id,)
    return self.stop_token_ids + eos


@struct.dataclass
class StepSamples:
  """One sampled step per row.

  Attributes:
    tokens: `[B, max_step_len]` step tokens, 0 after `lengths`.
    lengths: `[B]` number of step tokens (stop/EOS token included).
    ended_with_eos: `[B]` the step ended with EOS.
    is_final: `[B]` the step ends the solution (EOS or answer marker).
    log_prob: `[B]` sum of the sampled tokens' log-probabilities (under the
      filtered, temperature-scaled distribution; the plain one for greedy).
    last_hidden: `[B, E]` final hidden state at the step's last token.
  """

  tokens: Array
  lengths: Array
  ended_with_eos: Array
  is_final: Array
  log_prob: Array
  last_hidden: Array


def filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
  """Sets logits outside the top-k / top-p nucleus to -inf. `[..., V]`."""
  neg_inf = jnp.finfo(logits.dtype).min
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token while the mass strictly before it is below top_p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, neg_inf, logits)
  return logits


def _inverse_cdf_sample(keys: Array, logits: Array) -> Array:
  """One token per row of `logits [B, V]` from its softmax, `[B]`.

  One uniform number per row (the Gumbel-max trick of `random.categorical`
  draws one per vocabulary entry, which dominates a small model's decode step
  and grows with the vocabulary).
  """
  probs = jax.nn.softmax(logits, axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  u = jax.vmap(jax.random.uniform)(keys)  # [0, 1)
  # The first entry whose cdf passes u: never one of probability 0.
  passed = cdf > (u * cdf[:, -1])[:, None]
  # Rounding can leave none (u * total == total): take the last possible one.
  last = probs.shape[-1] - 1 - jnp.argmax(probs[:, ::-1] > 0, axis=-1)
  return jnp.where(jnp.any(passed, axis=-1), jnp.argmax(passed, axis=-1),
                   last)


def _sample_token(logits: Array, keys: Array, index: Array, config):
  """Next token `[B]` and its log-prob `[B]` from `logits [B, V]`."""
  if config.temperature == 0:
    tokens = jnp.argmax(logits, axis=-1)
  else:
    logits = filter_logits(
        logits / config.temperature, config.top_k, config.top_p
    )
    row_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, index)
    tokens = _inverse_cdf_sample(row_keys, logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return tokens, jnp.take_along_axis(log_probs, tokens[:, None], -1)[:, 0]


def prefill(
    model: transformer_lib.Transformer,
    prefix: Array,
    prefix_lengths: Array,
) -> tuple[Array, Array, transformer_lib.KVCache]:
  """Encodes right-padded prefixes into a fresh cache `[B, K, P, D]`.

  Args:
    model: the policy LM.
    prefix: `[B, P]` token ids, right-padded.
    prefix_lengths: `[B]` real lengths, each >= 1.

  Returns:
    `(logits [B, V], hidden [B, E])` at each row's last real token, and the
    cache.
  """
  cache = transformer_lib.KVCache.zeros(model.config, *prefix.shape)
  positions = transformer_lib.default_positions(prefix)
  hidden, cache = model.hidden(prefix, positions, cache)
  last = transformer_lib.last_token_hidden(hidden, prefix_lengths)
  return model.logits(last), last, cache


def _starts_with(tokens: Array, marker: tuple[int, ...]) -> Array:
  """`[B]` whether each row of `tokens [B, S]` begins with `marker`."""
  if not marker:
    return jnp.zeros(tokens.shape[0], bool)
  return jnp.all(tokens[:, : len(marker)] == jnp.array(marker), axis=-1)


def sample_step_with_model(
    model: transformer_lib.Transformer,
    prefix: Array,
    prefix_lengths: Array,
    keys: Array,
    config: SamplerConfig,
    num_samples: int = 1,
) -> tuple[StepSamples, transformer_lib.KVCache]:
  """Samples `num_samples` steps per prefix (un-jitted; see `sample_step`).

  Each prefix is prefilled once and shared by its samples: the prefix usually
  costs more than the short step that follows it.

  Args:
    model: the policy LM.
    prefix: `[B, P]` token ids, right-padded.
    prefix_lengths: `[B]` real prefix lengths (>= 1).
    keys: `[B * num_samples]` PRNG keys, one per output row.
    config: sampling settings.
    num_samples: steps per prefix; output row `i * num_samples + j` is
      sample `j` of prefix `i`.

  Returns:
    The samples (`B * num_samples` rows) and the steps' own keys/values (see
    `sample_from_cache`).
  """
  logits, hidden, cache = prefill(model, prefix, prefix_lengths)
  return sample_from_cache(model, cache, hidden, prefix_lengths, keys, config,
                           num_samples, logits=logits)


def sample_from_cache(
    model: transformer_lib.Transformer,
    cache: transformer_lib.KVCache,
    hidden: Array,
    prefix_lengths: Array,
    keys: Array,
    config: SamplerConfig,
    num_samples: int = 1,
    *,
    logits: Array | None = None,
) -> tuple[StepSamples, transformer_lib.KVCache]:
  """Samples `num_samples` steps after prefixes already in a KV cache.

  The samples of a prefix share its cache (`transformer.PrefixedCache`);
  only their own steps' keys/values are written.

  Args:
    model: the policy LM.
    cache: `[B]` rows holding each prefix in slots `[0, prefix_lengths)`.
    hidden: `[B, E]` final hidden state at each prefix's last token.
    prefix_lengths: `[B]`.
    keys: `[B * num_samples]` PRNG keys, one per output row.
    config: sampling settings.
    num_samples: steps per prefix (row `i * num_samples + j`).
    logits: `[B, V]` next-token logits, if already computed from `hidden`.

  Returns:
    The samples and the steps' keys/values, `[B * num_samples, K, S, D]` per
    layer, slot `s` holding position `prefix_lengths + s` (slots past a
    step's length hold garbage).
  """
  max_len = config.max_step_len
  if logits is None:
    logits = model.logits(hidden)
  tile = lambda x: jnp.repeat(x, num_samples, axis=0)
  logits, hidden = tile(logits), tile(hidden)
  positions = tile(prefix_lengths)[:, None]
  batch = logits.shape[0]
  first, first_logp = _sample_token(logits, keys, jnp.int32(0), config)
  end_ids = jnp.array(config.end_token_ids or (-1,), jnp.int32)
  tokens = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(first)
  state = dict(
      index=jnp.int32(0),  # decode iterations done
      tokens=tokens,
      lengths=jnp.ones(batch, jnp.int32),
      done=jnp.zeros(batch, bool),
      log_prob=first_logp,
      last_hidden=hidden,
      steps=transformer_lib.KVCache.zeros(model.config, batch, max_len),
  )

  prefixed = transformer_lib.PrefixedCache.create(
      cache, prefix_lengths, state["steps"], 0)
  capacities = sorted({math.ceil(batch * i / config.decode_buckets)
                       for i in range(1, config.decode_buckets)} - {batch})

  def decode(index, newest, active, steps):
    """Hidden states `[N, E]` and logits `[N, V]` after each row's newest
    token (garbage for rows not `active`), and the step slots."""
    cache = prefixed.replace(steps=steps, step_start=index)

    def every_row():
      h, after = model.hidden(newest[:, None], positions + index, cache)
      return h[:, 0], model.logits(h[:, 0]), after.steps

    def packed(capacity):
      rows = jnp.nonzero(active, size=capacity, fill_value=batch)[0]
      real = jnp.minimum(rows, batch - 1)
      h, after = model.hidden(newest[real][None],
                              (positions[real, 0] + index)[None],
                              cache.replace(token_rows=rows))
      unpack = lambda x: jnp.zeros((batch,) + x.shape[1:], x.dtype).at[
          rows].set(x, mode="drop")
      return unpack(h[0]), unpack(model.logits(h[0])), after.steps

    return transformer_lib.run_packed(jnp.sum(active), capacities, packed,
                                      every_row)

  def cond(s):
    return ~jnp.all(s["done"])

  def body(s):
    # Every active row has grown at every iteration so far: its newest token
    # sits in slot `index` (done rows compute garbage that is not kept).
    index = s["index"]
    newest = jax.lax.dynamic_index_in_dim(s["tokens"], index, 1,
                                          keepdims=False)
    active = ~s["done"]
    h, logits, steps = decode(index, newest, active, s["steps"])
    last_hidden = jnp.where(active[:, None], h, s["last_hidden"])
    ended = jnp.isin(newest, end_ids) | (s["lengths"] >= max_len)
    grow = active & ~ended
    nxt, logp = _sample_token(logits, keys, index + 1, config)
    slot = jnp.minimum(s["lengths"], max_len - 1)
    rows = jnp.arange(batch)
    tokens = s["tokens"].at[rows, slot].set(
        jnp.where(grow, nxt, s["tokens"][rows, slot])
    )
    return dict(
        index=index + 1,
        tokens=tokens,
        lengths=s["lengths"] + grow,
        done=s["done"] | ended,
        log_prob=s["log_prob"] + jnp.where(grow, logp, 0.0),
        last_hidden=last_hidden,
        steps=steps,
    )

  s = jax.lax.while_loop(cond, body, state)
  last_token = jnp.take_along_axis(s["tokens"], s["lengths"][:, None] - 1, 1)
  ended_with_eos = (
      jnp.zeros(batch, bool)
      if config.eos_token_id is None
      else last_token[:, 0] == config.eos_token_id
  )
  has_marker = _starts_with(s["tokens"], config.answer_marker_ids) & (
      s["lengths"] >= len(config.answer_marker_ids))
  samples = StepSamples(
      tokens=s["tokens"],
      lengths=s["lengths"],
      ended_with_eos=ended_with_eos,
      is_final=ended_with_eos | has_marker,
      log_prob=s["log_prob"],
      last_hidden=s["last_hidden"],
  )
  return samples, s["steps"]


@functools.partial(jax.jit,
                   static_argnames=("graphdef", "config", "num_samples"))
def sample_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prefix: Array,
    prefix_lengths: Array,
    keys: Array,
    config: SamplerConfig,
    num_samples: int = 1,
) -> StepSamples:
  """Jitted `sample_step_with_model` on an explicit `(graphdef, state)`,
  returning the samples only."""
  model = nnx.merge(graphdef, state)
  return sample_step_with_model(model, prefix, prefix_lengths, keys, config,
                                num_samples)[0]
