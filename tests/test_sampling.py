"""The step sampler: agrees with a naive full-forward loop, stops where it
should, is reproducible by key and independent of its batch-mates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from restmcts_jax import sampling
from restmcts_jax.models import transformer as tl
from restmcts_jax.models import value_head
from restmcts_jax.search import node_cache
from tests.test_transformer import TINY, _model

STOPS = (5, 9, 17, 33, 40)
EOS = 2


def _prefixes():
  lengths = np.array([2, 6, 4, 9], np.int32)
  rng = np.random.default_rng(0)
  prefix = np.zeros((4, 9), np.int32)
  for i, n in enumerate(lengths):
    prefix[i, :n] = rng.integers(3, TINY.vocab_size, n)
  return jnp.array(prefix), jnp.array(lengths)


def _sample(model, prefix, lengths, config, seed=0):
  graphdef, state = nnx.split(model)
  keys = jax.random.split(jax.random.key(seed), prefix.shape[0])
  return sampling.sample_step(graphdef, state, prefix, lengths, keys, config)


@functools.partial(jax.jit, static_argnums=0)
def _forward_at_width(graphdef, state, tokens):
  logits, hidden, _ = nnx.merge(graphdef, state)(
      tokens, tl.default_positions(tokens))
  return logits, hidden


def _full_forward(model, seq):
  """`(logits [T, V], hidden [T, E])` of a whole forward pass over the
  tokens `seq` (no cache), right-padded to one width that a causal model's
  outputs do not see: one compiled program serves every length."""
  seq = np.asarray(seq).reshape(-1)
  tokens = np.zeros((1, 32), np.int32)
  tokens[0, :seq.size] = seq
  logits, hidden = _forward_at_width(*nnx.split(model), jnp.asarray(tokens))
  return logits[0, :seq.size], hidden[0, :seq.size]


def _naive_greedy(model, row, config):
  """One step by re-running the whole sequence for every new token."""
  seq = list(row)
  step = []
  while True:
    token = int(jnp.argmax(_full_forward(model, seq)[0][-1]))
    step.append(token)
    seq.append(token)
    if token in config.end_token_ids or len(step) == config.max_step_len:
      return step


@pytest.mark.parametrize("max_step_len", [3, 12])
def test_greedy_step_matches_naive_full_forward_decoding(max_step_len):
  model = _model()
  prefix, lengths = _prefixes()
  config = sampling.SamplerConfig(max_step_len=max_step_len, temperature=0.0,
                                  stop_token_ids=STOPS, eos_token_id=EOS)
  out = _sample(model, prefix, lengths, config)
  for i in range(prefix.shape[0]):
    want = _naive_greedy(model, np.asarray(prefix[i, :lengths[i]]), config)
    n = int(out.lengths[i])
    assert n == len(want)
    assert list(np.asarray(out.tokens[i, :n])) == want
    assert not np.any(np.asarray(out.tokens[i, n:]))
  assert int(out.lengths.max()) <= max_step_len


def test_last_hidden_and_step_slices_hold_the_whole_step():
  model = _model()
  prefix, lengths = _prefixes()
  k = 2
  config = sampling.SamplerConfig(max_step_len=8, temperature=1.0,
                                  stop_token_ids=STOPS, eos_token_id=EOS)
  keys = jax.random.split(jax.random.key(0), prefix.shape[0] * k)
  out, steps = jax.jit(sampling.sample_step_with_model,
                       static_argnums=(4, 5))(model, prefix, lengths, keys,
                                              config, k)
  _, _, prefix_cache = sampling.prefill(model, prefix, lengths)
  width = prefix.shape[1] + config.max_step_len + 1
  for row in range(prefix.shape[0] * k):
    i = row // k
    full = jnp.concatenate([prefix[i, :lengths[i]],
                            out.tokens[row, :out.lengths[row]]])[None]
    hidden = _full_forward(model, full)[1]
    np.testing.assert_allclose(out.last_hidden[row], hidden[-1], atol=1e-5)
    # The prefix's cache with the step slices written after it continues
    # like a full forward pass.
    cache = tl.KVCache.zeros(TINY, 1, width)
    cache = node_cache.insert(cache, jnp.zeros(1, jnp.int32), jax.tree.map(
        lambda c: c[i:i + 1], prefix_cache))
    cache = node_cache.insert(cache, lengths[i:i + 1], jax.tree.map(
        lambda c: c[row:row + 1], steps))
    nxt = jnp.array([[7]])
    cached, _, _ = model(nxt, jnp.array([[full.shape[1]]]), cache)
    ref = _full_forward(model, jnp.concatenate([full, nxt], 1))[0]
    np.testing.assert_allclose(cached[0, 0], ref[-1], atol=1e-5)


def test_stop_reasons_eos_answer_marker_and_max_length():
  model = _model()
  prefix, lengths = _prefixes()
  greedy = sampling.SamplerConfig(max_step_len=6, temperature=0.0)
  first = _sample(model, prefix, lengths, greedy)
  # Make row 0's first greedy token the EOS and row 1's the answer marker.
  eos, marker = int(first.tokens[0, 0]), int(first.tokens[1, 0])
  assert eos != marker, "pick rows whose greedy first tokens differ"
  config = sampling.SamplerConfig(max_step_len=6, temperature=0.0,
                                  eos_token_id=eos, answer_marker_ids=(marker,))
  out = _sample(model, prefix, lengths, config)
  assert int(out.lengths[0]) == 1 and bool(out.ended_with_eos[0])
  assert bool(out.is_final[0]) and bool(out.is_final[1])
  assert not bool(out.ended_with_eos[1])
  # Without any stop token every row runs to max_step_len and is not final.
  plain = _sample(model, prefix, lengths,
                  sampling.SamplerConfig(max_step_len=6, temperature=0.0))
  assert np.all(np.asarray(plain.lengths) == 6)
  assert not np.any(np.asarray(plain.is_final))


def test_sampling_is_determined_by_the_keys_and_independent_of_the_batch():
  model = _model()
  prefix, lengths = _prefixes()
  config = sampling.SamplerConfig(max_step_len=10, temperature=1.0, top_k=20,
                                  stop_token_ids=STOPS, eos_token_id=EOS)
  a = _sample(model, prefix, lengths, config, seed=3)
  b = _sample(model, prefix, lengths, config, seed=3)
  c = _sample(model, prefix, lengths, config, seed=4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  # Row 2 alone, with its own key, samples the same step as in the batch.
  graphdef, state = nnx.split(model)
  keys = jax.random.split(jax.random.key(3), 4)
  alone = sampling.sample_step(graphdef, state, prefix[2:3, :lengths[2]],
                               lengths[2:3], keys[2:3], config)
  n = int(a.lengths[2])
  assert int(alone.lengths[0]) == n
  np.testing.assert_array_equal(alone.tokens[0, :n], a.tokens[2, :n])
  np.testing.assert_allclose(alone.log_prob[0], a.log_prob[2], rtol=1e-5)


def test_first_token_frequencies_follow_the_tempered_distribution():
  model = _model()
  n = 4000
  prefix = jnp.tile(jnp.array([[3, 4, 5, 6]]), (n, 1))
  lengths = jnp.full((n,), 4)
  config = sampling.SamplerConfig(max_step_len=1, temperature=0.8)
  out = _sample(model, prefix, lengths, config)
  logits, _, _ = model(prefix[:1], tl.default_positions(prefix[:1]))
  probs = np.asarray(jax.nn.softmax(logits[0, -1] / 0.8))
  freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=TINY.vocab_size) / n
  # 4 standard errors of a binomial frequency, per token.
  tol = 4 * np.sqrt(probs * (1 - probs) / n) + 1e-3
  assert np.all(np.abs(freq - probs) <= tol)
  np.testing.assert_allclose(
      out.log_prob, np.log(probs[np.asarray(out.tokens[:, 0])]), rtol=1e-4)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 5), (0.0, 0)])
def test_log_prob_is_the_sum_over_the_step_of_the_sampling_distribution(
    temperature, top_k):
  model = _model()
  prefix, lengths = _prefixes()
  config = sampling.SamplerConfig(max_step_len=6, temperature=temperature,
                                  top_k=top_k, stop_token_ids=STOPS,
                                  eos_token_id=EOS)
  out = _sample(model, prefix, lengths, config)
  for i in range(prefix.shape[0]):
    step = out.tokens[i, :out.lengths[i]]
    full = jnp.concatenate([prefix[i, :lengths[i]], step])[None]
    logits = _full_forward(model, full)[0]
    logits = logits[lengths[i] - 1:-1] / (temperature or 1.0)
    logits = sampling.filter_logits(logits, top_k, 1.0)
    want = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                       step[:, None], -1))
    np.testing.assert_allclose(out.log_prob[i], want, rtol=1e-4, atol=1e-4)


def test_sampler_config_rejects_bad_settings():
  for bad in [dict(top_p=0.0), dict(temperature=-1.0), dict(top_k=-2),
              dict(max_step_len=2, answer_marker_ids=(1, 2, 3)),
              dict(decode_buckets=0)]:
    with pytest.raises(ValueError, match=next(iter(bad))):
      sampling.SamplerConfig(**bad)


def test_filter_logits_top_k_and_top_p_by_hand():
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
  kept = lambda x: np.asarray(x > -1e30)[0].tolist()
  assert kept(sampling.filter_logits(logits, 2, 1.0)) == [False, True, False, True]
  # Smallest set with mass >= 0.7: {0.5, 0.3}; with mass >= 0.9: add 0.15.
  assert kept(sampling.filter_logits(logits, 0, 0.7)) == [False, True, False, True]
  assert kept(sampling.filter_logits(logits, 0, 0.9)) == [False, True, True, True]
  assert kept(sampling.filter_logits(logits, 0, 0.4)) == [False, True, False, False]


def test_top_k_one_is_greedy():
  model = _model()
  prefix, lengths = _prefixes()
  kw = dict(max_step_len=8, stop_token_ids=STOPS, eos_token_id=EOS)
  greedy = _sample(model, prefix, lengths,
                   sampling.SamplerConfig(temperature=0.0, **kw))
  top1 = _sample(model, prefix, lengths,
                 sampling.SamplerConfig(temperature=1.3, top_k=1, **kw))
  np.testing.assert_array_equal(greedy.tokens, top1.tokens)


def test_shared_value_head_reads_the_samplers_last_hidden():
  policy = _model()
  vm = value_head.make_value_model(policy, share_backbone=True,
                                   rngs=nnx.Rngs(1))
  vm.head.kernel.set_value(jax.random.normal(jax.random.key(0), (TINY.embed_dim,)))
  prefix, lengths = _prefixes()
  config = sampling.SamplerConfig(max_step_len=8, temperature=1.0,
                                  stop_token_ids=STOPS, eos_token_id=EOS)
  out = _sample(policy, prefix, lengths, config)
  width = prefix.shape[1] + config.max_step_len
  rows = np.zeros((4, width), np.int32)
  for i in range(4):
    seq = np.concatenate([prefix[i, :lengths[i]], out.tokens[i, :out.lengths[i]]])
    rows[i, :len(seq)] = seq
  values = vm(jnp.array(rows), lengths + out.lengths)
  np.testing.assert_allclose(vm.head(out.last_hidden), values, atol=1e-5)


def test_tiled_samples_equal_sampling_repeated_prefixes():
  """Prefilling once and tiling the cache == prefilling every copy."""
  model = _model()
  prefix, lengths = _prefixes()
  config = sampling.SamplerConfig(max_step_len=8, temperature=1.0,
                                  stop_token_ids=STOPS, eos_token_id=EOS)
  graphdef, state = nnx.split(model)
  keys = jax.random.split(jax.random.key(9), 12)
  tiled = sampling.sample_step(graphdef, state, prefix, lengths, keys, config,
                               num_samples=3)
  repeated = sampling.sample_step(graphdef, state, jnp.repeat(prefix, 3, 0),
                                  jnp.repeat(lengths, 3), keys, config)
  np.testing.assert_array_equal(tiled.tokens, repeated.tokens)
  np.testing.assert_array_equal(tiled.lengths, repeated.lengths)
  np.testing.assert_allclose(tiled.log_prob, repeated.log_prob, rtol=1e-5)
  # The three samples of one prefix differ (different keys).
  assert len({tuple(np.asarray(t)) for t in tiled.tokens[:3]}) > 1


def test_inverse_cdf_never_draws_a_filtered_token_and_follows_the_softmax():
  logits = jnp.log(jnp.array([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]))
  logits = jnp.tile(logits, (20000, 1))
  keys = jax.random.split(jax.random.key(0), logits.shape[0])
  tokens = np.asarray(sampling._inverse_cdf_sample(keys, logits))
  freq = np.bincount(tokens, minlength=6) / len(tokens)
  assert freq[0] == freq[2] == freq[5] == 0
  np.testing.assert_allclose(freq[[1, 3, 4]], [0.5, 0.3, 0.2], atol=0.015)


def test_inverse_cdf_falls_back_to_the_last_possible_token(monkeypatch):
  """If u * total rounds up to the total no cdf entry passes it; the draw is
  then the last token of positive probability, not token 0."""
  monkeypatch.setattr(sampling.jax.random, "uniform",
                      lambda key, *a, **k: jnp.float32(1.0))
  logits = jnp.log(jnp.array([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]))
  token = sampling._inverse_cdf_sample(jax.random.split(jax.random.key(0), 1),
                                       logits)
  assert int(token[0]) == 4


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_packing_the_rows_still_decoding_changes_no_sample(temperature):
  """Decoding only the rows still going (packed into 1/4, 2/4 or 3/4 of the
  batch) gives every row the step, log-prob, hidden state and step slots it
  gets when all rows decode to the end."""
  model = _model()
  prefix, lengths = _prefixes()
  keys = jax.random.split(jax.random.key(5), prefix.shape[0] * 3)
  run = jax.jit(sampling.sample_step_with_model, static_argnums=(4, 5))
  outs = {}
  for buckets in (1, 4):
    config = sampling.SamplerConfig(
        max_step_len=10, temperature=temperature, stop_token_ids=STOPS,
        eos_token_id=EOS, decode_buckets=buckets)
    outs[buckets] = run(model, prefix, lengths, keys, config, 3)
  (every, every_steps), (packed, packed_steps) = outs[1], outs[4]
  # Rows still decoding at each iteration: some iterations ran packed (into
  # 3, 6 or 9 of the 12 rows), sampled ones with padding too.
  going = [int(np.sum(np.asarray(every.lengths) > j))
           for j in range(int(every.lengths.max()))]
  assert any(c <= 9 for c in going)
  assert temperature == 0 or any(c < 12 and c % 3 for c in going)
  np.testing.assert_array_equal(packed.tokens, every.tokens)
  np.testing.assert_array_equal(packed.lengths, every.lengths)
  np.testing.assert_allclose(packed.log_prob, every.log_prob, rtol=1e-5)
  np.testing.assert_allclose(packed.last_hidden, every.last_hidden,
                             atol=1e-5)
  for a, b in zip(jax.tree.leaves(packed_steps), jax.tree.leaves(every_steps)):
    for row, n in enumerate(np.asarray(every.lengths)):
      np.testing.assert_allclose(a[row, :, :n], b[row, :, :n], atol=1e-5)
