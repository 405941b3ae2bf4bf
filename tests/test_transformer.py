"""The decoder LM: cached decoding equals a full forward pass; dtypes; GQA;
RoPE; sharding by logical axis rules gives the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from restmcts_jax.models import transformer as tl
from restmcts_jax.training import sharding

TINY = tl.TransformerConfig(
    vocab_size=61, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, mlp_dim=48, qkv_bias=True, norm_eps=1e-6)


def _randomize(model, seed=0):
  """Random values for every parameter (norms and biases included)."""
  state = nnx.state(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [0.3 * jax.random.normal(k, x.shape, x.dtype) + (x.ndim == 1) * 1.0
         for k, x in zip(keys, leaves)]
  nnx.update(model, jax.tree.unflatten(treedef, new))
  return model


def _model(config=TINY, seed=0):
  return _randomize(tl.Transformer(config, rngs=nnx.Rngs(seed)), seed)


def test_cached_decoding_equals_full_forward_at_every_position():
  model = _model()
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, TINY.vocab_size)
  full_logits, _, _ = model(tokens, tl.default_positions(tokens))

  # Prefill 5 tokens, then feed the rest one at a time through the cache.
  cache = tl.KVCache.zeros(TINY, 3, 16)
  positions = tl.default_positions(tokens)
  logits, _, cache = model(tokens[:, :5], positions[:, :5], cache)
  pieces = [logits]
  for t in range(5, 12):
    logits, _, cache = model(tokens[:, t:t + 1], positions[:, t:t + 1], cache)
    pieces.append(logits)
  cached_logits = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(cached_logits, full_logits, atol=1e-5, rtol=1e-5)


def test_per_row_positions_in_cache_match_unpadded_rows():
  """Rows of different prefix lengths decode at their own positions."""
  model = _model()
  lengths = np.array([3, 7])
  seqs = [np.arange(1, n + 3) % TINY.vocab_size for n in lengths]
  padded = np.zeros((2, 7), np.int32)
  for i, n in enumerate(lengths):
    padded[i, :n] = seqs[i][:n]
  cache = tl.KVCache.zeros(TINY, 2, 10)
  _, _, cache = model(jnp.array(padded), tl.default_positions(padded), cache)
  nxt = jnp.array([[seqs[0][3]], [seqs[1][7]]])
  logits, _, _ = model(nxt, jnp.array(lengths)[:, None], cache)
  for i, n in enumerate(lengths):
    row = jnp.array(seqs[i][: n + 1])[None]
    ref, _, _ = model(row, tl.default_positions(row))
    np.testing.assert_allclose(logits[i, 0], ref[0, -1], atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
  """A GQA model equals an MHA model whose k/v heads are repeated copies."""
  gqa = _model()
  mha_config = tl.TransformerConfig(**{**TINY.__dict__, "num_kv_heads": 4})
  mha = tl.Transformer(mha_config, rngs=nnx.Rngs(0))
  g_state = nnx.state(gqa)
  m_state = jax.tree.map(lambda x: x, g_state)
  for layer in m_state["layers"].values():
    for name in ("k_proj", "v_proj"):
      layer["attn"][name].set_value(jnp.repeat(layer["attn"][name][...], 2, axis=1))
    for name in ("k_bias", "v_bias"):
      layer["attn"][name].set_value(jnp.repeat(layer["attn"][name][...], 2, axis=0))
  nnx.update(mha, m_state)
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, TINY.vocab_size)
  pos = tl.default_positions(tokens)
  np.testing.assert_allclose(mha(tokens, pos)[0], gqa(tokens, pos)[0],
                             atol=1e-5, rtol=1e-5)


def test_rope_rotation_preserves_norm_and_relative_positions():
  inv_freq = tl.rope_inv_freq(TINY)
  x = jax.random.normal(jax.random.key(0), (1, 1, 1, TINY.head_dim))
  y = jax.random.normal(jax.random.key(1), (1, 1, 1, TINY.head_dim))
  def dot_at(p, q):
    rx = tl.apply_rope(x, *tl.rope_tables(jnp.array([[p]]), inv_freq))
    ry = tl.apply_rope(y, *tl.rope_tables(jnp.array([[q]]), inv_freq))
    return float(jnp.sum(rx * ry)), float(jnp.linalg.norm(rx))
  d1, n1 = dot_at(3, 1)
  d2, _ = dot_at(10, 8)
  np.testing.assert_allclose(d1, d2, rtol=1e-5)
  np.testing.assert_allclose(n1, float(jnp.linalg.norm(x)), rtol=1e-5)


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
  config = tl.TransformerConfig(**{**TINY.__dict__, "head_dim": 64,
                                   "rope_theta": 500_000.0,
                                   "rope_llama3_scaling": (8.0, 1.0, 4.0, 64)})
  plain = tl.rope_inv_freq(tl.TransformerConfig(
      **{**config.__dict__, "rope_llama3_scaling": None}))
  scaled = tl.rope_inv_freq(config)
  wavelen = 2 * np.pi / np.asarray(plain)
  np.testing.assert_allclose(scaled[wavelen < 16], plain[wavelen < 16])
  np.testing.assert_allclose(scaled[wavelen > 64], plain[wavelen > 64] / 8.0,
                             rtol=1e-6)


def test_bf16_compute_is_close_to_f32():
  model = _model()
  bf16 = tl.Transformer(
      tl.TransformerConfig(**{**TINY.__dict__, "dtype": jnp.bfloat16}),
      rngs=nnx.Rngs(0))
  nnx.update(bf16, nnx.state(model))
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, TINY.vocab_size)
  pos = tl.default_positions(tokens)
  ref = model(tokens, pos)[0]
  low, hidden, _ = bf16(tokens, pos)
  assert hidden.dtype == jnp.bfloat16 and low.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(low - ref))) < 0.03 * float(jnp.max(jnp.abs(ref)))
  # Greedy choices mostly survive bf16 rounding.
  assert float(jnp.mean(low.argmax(-1) == ref.argmax(-1))) >= 0.8


def test_tied_embeddings_use_the_embedding_matrix():
  config = tl.TransformerConfig(**{**TINY.__dict__, "tie_embeddings": True})
  model = _model(config)
  assert not hasattr(model, "lm_head")
  h = jax.random.normal(jax.random.key(0), (2, TINY.embed_dim))
  np.testing.assert_allclose(model.logits(h), h @ model.embedding[...].T,
                             rtol=1e-6)


def test_every_parameter_has_logical_axis_names_of_matching_rank():
  state = nnx.state(_model())
  for path, var in nnx.to_flat_state(state):
    names = var.get_metadata()["out_sharding"]
    assert len(names) == var[...].ndim, path
    assert set(names) <= set(sharding.LOGICAL_AXES), path


@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4), (1, 8)])
def test_sharded_forward_equals_single_device(mesh_shape):
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  # Every sharded dimension divisible by 8.
  config = tl.TransformerConfig(**{**TINY.__dict__, "num_heads": 8,
                                   "num_kv_heads": 8, "head_dim": 4,
                                   "vocab_size": 64})
  tokens = jax.random.randint(jax.random.key(4), (8, 10), 0, config.vocab_size)
  ref = _model(config)(tokens, tl.default_positions(tokens))[0]
  mesh = jax.make_mesh(mesh_shape, ("fsdp", "tensor"),
                       axis_types=(AxisType.Auto,) * 2)
  rules = sharding.complete_rules([
      ("batch", "fsdp"), ("embed", "fsdp"), ("mlp", "tensor"),
      ("heads", "tensor"), ("kv_heads", "tensor"), ("vocab", "tensor")])
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    graphdef, state = nnx.split(tl.Transformer(config, rngs=nnx.Rngs(0)))
    # The same random values as the single-device model, placed sharded.
    state = jax.device_put(nnx.state(_model(config)),
                           nnx.get_named_sharding(state, mesh))
    gate = state["layers"][0]["mlp"]["gate_proj"][...]
    assert gate.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert gate.addressable_shards[0].data.shape == (
        config.embed_dim // mesh_shape[0], config.mlp_dim // mesh_shape[1])

    @jax.jit
    def forward(state, tokens):
      m = nnx.merge(graphdef, state)
      return m(tokens, tl.default_positions(tokens))[0]

    out = forward(state, tokens)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
