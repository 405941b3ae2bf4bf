"""What a new sequence-length bucket costs: compiling the loop's AdamW step
vs running it, at a real model's shapes (random weights, nothing read).

The loop pads its training batches to length buckets
(`training.batching.DEFAULT_BUCKETS`) and compiles its step once per bucket
it meets (one jitted step per model and loss serves the whole run); the
persistent compilation cache that `restmcts_jax.main` keeps serves reruns and
resumed runs. With `--cache_dir`,
each step is compiled, JAX's in-memory caches are cleared and the step is
called again: the "cached call" column is that second first call, served by
the persistent cache (what a rerun or resumed run pays).

    python bench/compile.py --model=qwen2.5-0.5b --lengths=128,256,1024
    python bench/compile.py --model=qwen2.5-0.5b --lengths=256 \
        --dtypes=float32,bfloat16 --cache_dir=
    python bench/compile.py --model=tiny          # a quick check on CPU

TFLOP/s counts 6 x parameters x tokens per step (attention left out). Ends
with `RESULT compile_in_steps_<dtype>_<length> <compile s / step s>` and,
with `--cache_dir`, `RESULT cache_speedup_<dtype>_<length> <first call s /
cached call s>`.
"""

import atexit
import dataclasses
import pathlib
import shutil
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx

from restmcts_jax.models import presets
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.training import optim
from restmcts_jax.training import steps

_MODEL = flags.DEFINE_string(
    "model", "qwen2.5-0.5b", "A checkpoint folder (its config.json is read, "
    f"not its weights) or one of {sorted(presets.PRESETS)}.")
_LENGTHS = flags.DEFINE_list("lengths", ["128", "256", "1024"],
                             "Sequence lengths (buckets) to compile and run.")
_BATCH = flags.DEFINE_integer("batch", 4, "Rows per step (train.batch_size).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per length.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"],
                            "Compute dtypes (parameters stay float32).")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", None, "An empty folder for a persistent compilation cache "
    "('': a temporary one, removed at the end): also time each step's first "
    "call served from it. Without it no persistent cache is used.")
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def main(argv):
  del argv
  compile_s, cache_hits = [], []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compile_s.append(secs)
      if name == _BACKEND_COMPILE else None)
  jax.monitoring.register_event_listener(
      lambda name, **kw: cache_hits.append(name)
      if name == _CACHE_HIT else None)
  cached = _CACHE_DIR.value is not None
  if not cached:
    # Not even one set through JAX_COMPILATION_CACHE_DIR: every first call
    # compiles.
    jax.config.update("jax_enable_compilation_cache", False)
  else:
    if _CACHE_DIR.value:
      folder = pathlib.Path(_CACHE_DIR.value)
    else:  # A temporary cache: its programs go when the benchmark ends.
      folder = pathlib.Path(tempfile.mkdtemp(prefix="xla_"))
      atexit.register(shutil.rmtree, folder, ignore_errors=True)
    if folder.exists() and any(folder.iterdir()):
      raise app.UsageError(f"--cache_dir={folder} is not empty: its programs "
                           "would make the first calls cache hits")
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Cache every program, however quick to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  architecture = presets.model_config(_MODEL.value)
  device = jax.devices()[0]
  print(f"model {_MODEL.value}, AdamW step at batch {_BATCH.value}, "
        f"{device.device_kind} ({device.platform}), jax {jax.__version__}")
  header = (f"{'dtype':>8} | {'length':>6} | {'first call s':>12} | "
            f"{'XLA compile s':>13} | " +
            (f"{'cached call s':>13} | " if cached else "") +
            f"{'step ms':>7} | {'TFLOP/s':>7} | {'compile in steps':>16}")
  print(header + "\n" + "-" * len(header), flush=True)
  results = []
  for dtype in _DTYPES.value:
    model = transformer_lib.Transformer(
        dataclasses.replace(architecture, dtype=jnp.dtype(dtype)),
        rngs=nnx.Rngs(0))
    graph, params = nnx.split(model)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    tx = optim.make_optimizer(optim.OptimizerConfig(
        learning_rate=1e-5, warmup_steps=10, total_steps=100))
    state = steps.init_state(params, tx)
    step = steps.make_train_step(graph, steps.sft_loss, tx)
    for length in map(int, _LENGTHS.value):
      b = _BATCH.value
      batch = steps.SFTBatch(tokens=jnp.ones((b, length), jnp.int32),
                             lengths=jnp.full((b,), length, jnp.int32),
                             prompt_len=jnp.full((b,), 8, jnp.int32))
      compile_s.clear()
      start = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      first, compiled = time.perf_counter() - start, sum(compile_s)
      row = f"{dtype:>8} | {length:>6} | {first:>12.1f} | {compiled:>13.1f} | "
      if cached:
        jax.clear_caches()  # in-memory only: the folder stays
        step = steps.make_train_step(graph, steps.sft_loss, tx)
        cache_hits.clear()
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        again = time.perf_counter() - start
        if not cache_hits:
          raise RuntimeError(f"{dtype} x {length}: the step was compiled "
                             "again, not loaded from --cache_dir")
        row += f"{again:>13.1f} | "
        results.append((f"cache_speedup_{dtype}_{length}", first / again))
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      per_step = (time.perf_counter() - start) / _STEPS.value
      tflops = 6 * num_params * b * length / per_step / 1e12
      print(row + f"{per_step * 1000:>7.0f} | {tflops:>7.1f} | "
            f"{compiled / per_step:>16.0f}", flush=True)
      results.append((f"compile_in_steps_{dtype}_{length}",
                      compiled / per_step))
    del state, params, model
  peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
  if peak is not None:
    print(f"peak device memory {peak / 2**30:.2f} GiB")
  for name, ratio in results:
    print(f"RESULT {name} {ratio:.1f}")


if __name__ == "__main__":
  app.run(main)
