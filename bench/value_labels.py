"""`D_V0` labelling speed: trees in shape buckets vs one shape per call.

`initial_values.solution_records` labels the warm-start solutions of every
training puzzle (Eq. 1-2 over trees built from them), 128 puzzles per jitted
call. With `bucket_shapes` each call's node and child counts are rounded up to
powers of two, so a few compiled programs serve every call; without, every
call has its own shape and compiles again. Both run on the same D_V0 of the
game24 default (`configs/game24.py`, or a smaller one with the flags), in
this process, buckets first (a fresh jit cache for each: `jax.clear_caches`).

    python bench/value_labels.py
    python bench/value_labels.py --value_solutions 8

Ends with `RESULT value_labels_speedup <one shape per call / buckets>`.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from configs import game24  # pylint: disable=g-import-not-at-top
from restmcts_jax import experiment


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--value_solutions", type=int, default=None,
                      help="random solutions per puzzle (default: the "
                           "config's warmstart.value_solutions)")
  args = parser.parse_args()
  config = game24.get_config()
  if args.value_solutions:
    config.warmstart.value_solutions = args.value_solutions
  start = time.perf_counter()
  data = experiment.load_data(config)
  tokenizer = experiment.tokenizer_for(config, Path(tempfile.mkdtemp()), data)
  print(f"D_V0 solutions and tokenizer: {time.perf_counter() - start:.1f} s",
        flush=True)

  def label(bucket_shapes):
    jax.clear_caches()
    start = time.perf_counter()
    rows, targets, _ = experiment.initial_value_records(
        config, data, tokenizer, bucket_shapes=bucket_shapes)
    return time.perf_counter() - start, rows, targets

  bucketed_s, rows, targets = label(True)
  exact_s, exact_rows, exact_targets = label(False)
  assert rows == exact_rows and targets == exact_targets
  print(f"\n{len(data.train)} puzzles, {len(rows)} records (identical)")
  print(f"{'tree shapes':>20s} | seconds")
  print("-" * 30)
  print(f"{'buckets':>20s} | {bucketed_s:7.1f}")
  print(f"{'one per call':>20s} | {exact_s:7.1f}")
  print(f"RESULT value_labels_speedup {exact_s / bucketed_s:.3f}")


if __name__ == "__main__":
  main()
