"""The value head: a value in (0, 1) read at the last real token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from restmcts_jax.models import transformer as tl
from restmcts_jax.models import value_head
from tests.test_transformer import TINY, _model


def _value_model(share_backbone=False):
  policy = _model()
  vm = value_head.make_value_model(policy, share_backbone=share_backbone,
                                   rngs=nnx.Rngs(5))
  vm.head.kernel.set_value(
      2.0 * jax.random.normal(jax.random.key(1), (TINY.embed_dim,)))
  vm.head.bias.set_value(jnp.array(0.3))
  return policy, vm


def test_values_are_read_at_the_last_real_token_of_each_padded_row():
  _, vm = _value_model()
  seqs = [[3, 8, 1], [4, 4, 9, 10, 11, 2], [7]]
  padded = np.zeros((3, 8), np.int32)
  for i, s in enumerate(seqs):
    padded[i, :len(s)] = s
  values = vm(jnp.array(padded), jnp.array([len(s) for s in seqs]))
  assert values.shape == (3,)
  assert np.all((np.asarray(values) > 0) & (np.asarray(values) < 1))
  for i, s in enumerate(seqs):
    alone = vm(jnp.array([s]), jnp.array([len(s)]))
    np.testing.assert_allclose(values[i], alone[0], atol=1e-6)
  # Different prefixes get different values (the head is not constant).
  assert len(set(np.round(np.asarray(values), 6))) == 3


def test_value_is_sigmoid_of_linear_head_on_final_hidden_state():
  _, vm = _value_model()
  tokens = jnp.array([[5, 6, 7, 8]])
  hidden, _ = vm.backbone.hidden(tokens, jnp.arange(4)[None])
  expected = jax.nn.sigmoid(hidden[0, -1] @ vm.head.kernel[...] + 0.3)
  np.testing.assert_allclose(vm(tokens, jnp.array([4]))[0], expected, rtol=1e-6)


def test_shared_backbone_is_the_policy_and_separate_backbone_is_not():
  policy, shared = _value_model(share_backbone=True)
  _, separate = _value_model(share_backbone=False)
  assert shared.backbone is policy
  assert separate.backbone is not policy
  # The separate backbone starts as a copy of the policy's weights.
  for a, b in zip(jax.tree.leaves(nnx.state(policy)),
                  jax.tree.leaves(nnx.state(separate.backbone))):
    np.testing.assert_array_equal(a, b)
  separate.backbone.embedding.set_value(separate.backbone.embedding[...] + 1)
  assert not np.array_equal(policy.embedding[...],
                            separate.backbone.embedding[...])
  # Splitting policy + shared value model stores the backbone once.
  _, state = nnx.split((policy, shared))
  n_shared = len(jax.tree.leaves(state))
  _, state = nnx.split((policy, separate))
  assert len(jax.tree.leaves(state)) == 2 * n_shared - 2


def test_scoring_continuations_equals_scoring_each_full_sequence():
  _, vm = _value_model()
  prefix = jnp.array([[3, 8, 1, 0, 0], [4, 4, 9, 10, 11]])
  lengths = jnp.array([3, 5])
  steps = jnp.array([[5, 6, 0], [7, 0, 0], [9, 9, 9], [2, 3, 0]])
  step_lengths = jnp.array([2, 1, 3, 2])
  values = vm.score_continuations(prefix, lengths, steps, step_lengths, 2)
  for row in range(4):
    i = row // 2
    seq = list(np.asarray(prefix[i, :lengths[i]])) + list(
        np.asarray(steps[row, :step_lengths[row]]))
    want = vm(jnp.array([seq]), jnp.array([len(seq)]))[0]
    np.testing.assert_allclose(values[row], want, atol=1e-6)


@pytest.mark.parametrize("step_len", [1, 3, 5, 8])
def test_packed_and_padded_scoring_give_the_same_values_and_step_slices(
    step_len):
  """Short steps are packed (capacity 1/4, 1/2 or 3/4 of the rows' slots),
  long ones run padded; both equal scoring each full sequence, and the step
  slices continue like a full forward pass."""
  _, vm = _value_model()
  k, s = 3, 8
  rng = np.random.default_rng(step_len)
  prefix = jnp.array(rng.integers(3, TINY.vocab_size, (2, 6)), jnp.int32)
  lengths = jnp.array([4, 6])
  steps = jnp.array(rng.integers(3, TINY.vocab_size, (2 * k, s)), jnp.int32)
  step_lengths = jnp.array(
      np.clip(rng.integers(step_len - 1, step_len + 2, 2 * k), 1, s))
  cache = tl.KVCache.zeros(TINY, *prefix.shape)
  _, cache = vm.backbone.hidden(prefix, tl.default_positions(prefix), cache)
  values, slices = jax.jit(vm.score_from_cache, static_argnums=4)(
      cache, lengths, steps, step_lengths, k)
  for row in range(2 * k):
    i = row // k
    seq = jnp.concatenate([prefix[i, :lengths[i]],
                           steps[row, :step_lengths[row]]])[None]
    want = vm(seq, jnp.array([seq.shape[1]]))[0]
    np.testing.assert_allclose(values[row], want, atol=1e-5)
    full = tl.KVCache.zeros(TINY, 1, seq.shape[1])
    _, full = vm.backbone.hidden(seq, tl.default_positions(seq), full)
    got = jax.tree.map(lambda c: c[row, :, :step_lengths[row]], slices)
    ref = jax.tree.map(lambda c: c[0, :, lengths[i]:], full)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 got, ref)
