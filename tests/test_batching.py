"""Bucketed, fixed-shape batches from variable-length examples."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from restmcts_jax.training import batching


def test_bucket_length():
  assert batching.bucket_length(5, (8, 16)) == 8
  assert batching.bucket_length(16, (16, 8)) == 16
  with pytest.raises(ValueError, match="17 tokens exceeds the largest bucket 16"):
    batching.bucket_length(17, (8, 16))


def test_sft_batches_cover_every_example_once_with_fixed_shapes():
  rng = np.random.default_rng(0)
  examples = [(list(rng.integers(1, 50, n)), int(rng.integers(1, n)))
              for n in rng.integers(2, 30, 37)]
  seen = []
  for batch in batching.sft_batches(examples, 8, buckets=(8, 16, 32)):
    assert batch.tokens.shape[0] == 8 and batch.tokens.shape[1] in (8, 16, 32)
    for row, n, p in zip(batch.tokens, batch.lengths, batch.prompt_len):
      if n:
        seen.append((tuple(row[:n]), int(p)))
        assert not row[n:].any()
      else:
        assert p == 0 and not row.any()  # padding row
  assert sorted(seen) == sorted((tuple(t), p) for t, p in examples)


def test_length_grouping_keeps_padding_low():
  lengths = list(range(2, 256))
  examples = [([1] * n, 1) for n in lengths]
  buckets = tuple(range(16, 272, 16))
  widths = [b.tokens.shape[1] for b in batching.sft_batches(
      examples, 16, buckets=buckets)]
  # Without grouping: batches of 16 random lengths.
  shuffled = np.random.default_rng(0).permutation(lengths)
  random_widths = [batching.bucket_length(max(shuffled[i:i + 16]), buckets)
                   for i in range(0, len(shuffled), 16)]
  assert sum(widths) < 0.7 * sum(random_widths)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=200),
       st.floats(0, 1), st.integers(0, 2**31))
def test_first_step_mix_gives_first_steps_their_share(depths, share, seed):
  depths_array = np.asarray(depths)
  count = round(share * len(depths))
  if (count and 1 not in depths) or (count < len(depths)
                                     and set(depths) == {1}):
    with pytest.raises(ValueError, match=f"share of {share} needs"):
      batching.first_step_mix(depths, share, seed)
    return
  picks = batching.first_step_mix(depths, share, seed)
  assert len(picks) == len(depths)
  assert np.sum(depths_array[picks] == 1) == count
  np.testing.assert_array_equal(
      picks, batching.first_step_mix(depths, share, seed))  # seeded


def test_first_step_mix_repeats_the_rare_first_steps():
  depths = [1] * 10 + [2] * 45 + [3] * 45
  picks = batching.first_step_mix(depths, 0.5, seed=0)
  assert np.sum(picks < 10) == 50  # each first step about five times
  later = picks[picks >= 10]
  assert len(later) == 50 and len(set(later.tolist())) < 50
  # The later steps keep their own proportions (45 : 45, drawn at random).
  assert 15 <= np.sum(later < 55) <= 35
  with pytest.raises(ValueError, match="outside"):
    batching.first_step_mix(depths, 1.5, seed=0)


def test_value_batches_weight_only_real_rows():
  tokens = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
  batches = list(batching.value_batches(tokens, [0.1, 0.2, 0.3, 0.4], 3,
                                        buckets=(4,), seed=None))
  assert len(batches) == 2
  np.testing.assert_array_equal(batches[1].weight, [1, 0, 0])
  np.testing.assert_allclose(batches[0].target, [0.1, 0.2, 0.3])
  np.testing.assert_array_equal(batches[0].tokens[1], [4, 5, 0, 0])
