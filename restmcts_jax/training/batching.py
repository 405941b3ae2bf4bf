"""Variable-length examples → fixed-shape batches.

Rows are right-padded to the smallest bucket length that holds the longest
row, and the batch to a fixed number of rows with zero-weight padding rows,
so the jitted train step compiles once per bucket, not once per shape.
"""

from collections.abc import Iterator, Sequence

import numpy as np

from restmcts_jax.training import steps

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= `length`; ValueError if none is."""
  for b in sorted(buckets):
    if length <= b:
      return b
  raise ValueError(f"sequence of {length} tokens exceeds the largest bucket "
                   f"{max(buckets)}")


def _pad(rows: Sequence[Sequence[int]], batch_size: int,
         buckets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  width = bucket_length(max(len(r) for r in rows), buckets)
  tokens = np.zeros((batch_size, width), np.int32)
  lengths = np.zeros((batch_size,), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
    lengths[i] = len(row)
  return tokens, lengths


def sft_batches(
    examples: Sequence[tuple[Sequence[int], int]],
    batch_size: int,
    *,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    seed: int | None = 0,
) -> Iterator[steps.SFTBatch]:
  """Batches of `(tokens, prompt_len)` examples (shuffled when `seed` is set).

  Examples of similar length share a batch: they are sorted by length within
  shuffled windows of 16 batches, which keeps padding low.
  """
  order = _length_grouped_order([len(t) for t, _ in examples], batch_size,
                                seed)
  for start in range(0, len(order), batch_size):
    chunk = [examples[i] for i in order[start:start + batch_size]]
    tokens, lengths = _pad([t for t, _ in chunk], batch_size, buckets)
    prompt_len = np.zeros((batch_size,), np.int32)
    prompt_len[:len(chunk)] = [p for _, p in chunk]
    yield steps.SFTBatch(tokens=tokens, lengths=lengths, prompt_len=prompt_len)


def value_batches(
    tokens: Sequence[Sequence[int]],
    targets: Sequence[float],
    batch_size: int,
    *,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    seed: int | None = 0,
) -> Iterator[steps.ValueBatch]:
  """Batches of `(partial solution, value target)` records."""
  order = _length_grouped_order([len(t) for t in tokens], batch_size, seed)
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    rows, lengths = _pad([tokens[i] for i in idx], batch_size, buckets)
    target = np.zeros((batch_size,), np.float32)
    weight = np.zeros((batch_size,), np.float32)
    target[:len(idx)] = [targets[i] for i in idx]
    weight[:len(idx)] = 1.0
    yield steps.ValueBatch(tokens=rows, lengths=lengths, target=target,
                           weight=weight)


def _length_grouped_order(lengths: Sequence[int], batch_size: int,
                          seed: int | None) -> list[int]:
  """Example order: shuffled, then sorted by length inside windows."""
  order = np.arange(len(lengths))
  if seed is None:
    return order.tolist()
  rng = np.random.default_rng(seed)
  order = rng.permutation(order)
  window = 16 * batch_size
  lengths = np.asarray(lengths)
  groups = [order[i:i + window] for i in range(0, len(order), window)]
  groups = [g[np.argsort(lengths[g], kind="stable")] for g in groups]
  batches = [b for g in groups for b in np.array_split(
      g, max(1, -(-len(g) // batch_size)))]
  rng.shuffle(batches)
  return [int(i) for b in batches for i in b]
