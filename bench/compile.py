"""What a new sequence-length bucket costs: compiling the loop's AdamW step
vs running it, at a real model's shapes (random weights, nothing read).

Each training call of the loop jits a fresh step and pads its batches to
length buckets (`training.batching.DEFAULT_BUCKETS`), so the first call
compiles once per bucket it meets; the persistent compilation cache that
`restmcts_jax.main` keeps serves later calls and runs.

    python bench/compile.py --model=qwen2.5-0.5b --lengths=128,256,1024
    python bench/compile.py --model=tiny          # a quick check on CPU

Ends with `RESULT compile_in_steps_<length> <compile s / step s>`.
"""

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
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def main(argv):
  del argv
  compile_s = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compile_s.append(secs)
      if name == _BACKEND_COMPILE else None)
  model = transformer_lib.Transformer(presets.model_config(_MODEL.value),
                                      rngs=nnx.Rngs(0))
  graph, params = nnx.split(model)
  tx = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=1e-5, warmup_steps=10, total_steps=100))
  state = steps.init_state(params, tx)
  step = steps.make_train_step(graph, steps.sft_loss, tx)
  device = jax.devices()[0]
  print(f"model {_MODEL.value}, AdamW step at batch {_BATCH.value}, "
        f"{device.device_kind} ({device.platform}), jax {jax.__version__}")
  header = (f"{'length':>6} | {'first call s':>12} | {'XLA compile s':>13} | "
            f"{'step ms':>7} | {'compile in steps':>16}")
  print(header + "\n" + "-" * len(header))
  results = []
  for length in map(int, _LENGTHS.value):
    b = _BATCH.value
    batch = steps.SFTBatch(tokens=jnp.ones((b, length), jnp.int32),
                           lengths=jnp.full((b,), length, jnp.int32),
                           prompt_len=jnp.full((b,), 8, jnp.int32))
    compile_s.clear()
    start = time.perf_counter()
    state, metrics = step(state, batch)
    float(metrics["loss"])
    first, compiled = time.perf_counter() - start, sum(compile_s)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = step(state, batch)
    float(metrics["loss"])
    per_step = (time.perf_counter() - start) / _STEPS.value
    print(f"{length:>6} | {first:>12.1f} | {compiled:>13.1f} | "
          f"{per_step * 1000:>7.0f} | {compiled / per_step:>16.0f}")
    results.append((length, compiled / per_step))
  peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
  if peak is not None:
    print(f"peak device memory {peak / 2**30:.2f} GiB")
  for length, ratio in results:
    print(f"RESULT compile_in_steps_{length} {ratio:.1f}")


if __name__ == "__main__":
  app.run(main)
