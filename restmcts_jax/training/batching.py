"""Variable-length examples → fixed-shape batches.

Rows are right-padded to the smallest bucket length that holds the longest
row, and the batch to a fixed number of rows with zero-weight padding rows,
so the jitted train step compiles once per bucket, not once per shape.
"""

from collections.abc import Iterator, Sequence

import numpy as np

from restmcts_jax.training import steps

# Steps of 16 up to 128: short rows (partial solutions for the value model)
# cost little padding; each bucket used compiles the train step once.
DEFAULT_BUCKETS = (32, 48, 64, 80, 96, 112, 128, 256, 512, 1024, 2048)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= `length`; ValueError if none is."""
  for b in sorted(buckets):
    if length <= b:
      return b
  raise ValueError(f"sequence of {length} tokens exceeds the largest bucket "
                   f"{max(buckets)} (config key train.length_buckets)")


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
  for idx in _length_grouped_batches([len(t) for t, _ in examples],
                                     batch_size, seed):
    chunk = [examples[i] for i in idx]
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
  for idx in _length_grouped_batches([len(t) for t in tokens], batch_size,
                                     seed):
    rows, lengths = _pad([tokens[i] for i in idx], batch_size, buckets)
    target = np.zeros((batch_size,), np.float32)
    weight = np.zeros((batch_size,), np.float32)
    target[:len(idx)] = [targets[i] for i in idx]
    weight[:len(idx)] = 1.0
    yield steps.ValueBatch(tokens=rows, lengths=lengths, target=target,
                           weight=weight)


def first_step_mix(depths: Sequence[int], share: float,
                   seed: int) -> np.ndarray:
  """As many record indices as `depths` has, shuffled and drawn with
  replacement: `share` of them first-step records (depth 1), the rest the
  other records.

  Value records are mostly of late steps (solutions branch as they go on),
  while the first steps, where a search branches most, are the fewest and
  the hardest to judge.

  Raises:
    ValueError: if `share` is outside [0, 1] or a part it asks for is empty.
  """
  depths = np.asarray(depths)
  if not 0 <= share <= 1:
    raise ValueError(f"first-step share {share} is outside [0, 1]")
  first, rest = np.flatnonzero(depths == 1), np.flatnonzero(depths != 1)
  count = round(share * len(depths))
  if (count and not len(first)) or (count < len(depths) and not len(rest)):
    raise ValueError(f"a first-step share of {share} needs records of "
                     "the first step and of later ones")
  rng = np.random.default_rng(seed)
  return rng.permutation(np.concatenate([
      rng.choice(first, count), rng.choice(rest, len(depths) - count)]))


def _length_grouped_batches(lengths: Sequence[int], batch_size: int,
                            seed: int | None) -> list[list[int]]:
  """Example indices per batch: shuffled, sorted by length inside windows of
  16 batches, cut into batches, and the batches shuffled. In order when
  `seed` is None."""
  order = np.arange(len(lengths))
  chunks = lambda a: [a[i:i + batch_size].tolist()
                      for i in range(0, len(a), batch_size)]
  if seed is None:
    return chunks(order)
  rng = np.random.default_rng(seed)
  order = rng.permutation(order)
  lengths = np.asarray(lengths)
  window = 16 * batch_size
  batches = []
  for i in range(0, len(order), window):
    group = order[i:i + window]
    batches += chunks(group[np.argsort(lengths[group], kind="stable")])
  rng.shuffle(batches)
  return batches
