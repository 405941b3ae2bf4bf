"""Training speed: our jitted SFT step vs a `transformers` PyTorch step (CPU).

Same weights (ours exported to a Llama checkpoint and loaded by
`transformers`), same batch of token ids, same loss (next-token NLL over every
token), AdamW with the same settings and global-norm clipping on both sides.
Also reports our achieved FLOP/s as a share of this machine's measured f32
matmul peak (training FLOPs = 3 x the forward's matmul FLOPs).

    python bench/train_step.py
    python bench/train_step.py --batch 4 --seq_len 256

Ends with `RESULT train_speedup <ours / HF>` and
`RESULT train_flops_share <fraction of matmul peak>`.
"""

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from generate import BENCH_CONFIG, matmul_peak_flops, _median_seconds
from restmcts_jax.models import hf_io
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.training import optim
from restmcts_jax.training import steps

LR, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0


def train_flops(config, tokens: int) -> float:
  """3 x (2 x matmul parameters) per token; attention scores left out."""
  c = config
  per_layer = c.embed_dim * c.head_dim * 2 * (c.num_heads + c.num_kv_heads)
  per_layer += 3 * c.embed_dim * c.mlp_dim
  matmul_params = c.num_layers * per_layer + c.embed_dim * c.vocab_size
  return 3 * 2 * matmul_params * tokens


def bench_ours(model, ids, repeats):
  """(compile s, step s, first loss)."""
  graphdef, params = nnx.split(model)
  tx = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=LR, warmup_steps=0, total_steps=1000, end_fraction=1.0,
      weight_decay=WEIGHT_DECAY, clip_norm=CLIP))
  step = steps.make_train_step(graphdef, steps.sft_loss, tx)
  batch = steps.SFTBatch(tokens=jnp.asarray(ids),
                         lengths=jnp.full((ids.shape[0],), ids.shape[1]),
                         prompt_len=jnp.ones((ids.shape[0],), jnp.int32))
  state = [steps.init_state(params, tx)]
  start = time.perf_counter()
  state[0], metrics = step(state[0], batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start

  def run():
    state[0], m = step(state[0], batch)
    jax.block_until_ready(m)

  return compile_s, _median_seconds(run, repeats), float(metrics["loss"])


def bench_hf(model, ids, repeats):
  """(step s, first loss)."""
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  inputs = torch.from_numpy(ids.astype(np.int64))
  losses = []

  def run():
    loss = model(input_ids=inputs, labels=inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())

  run()  # warm-up
  return _median_seconds(run, repeats), losses[0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  model = transformer_lib.Transformer(BENCH_CONFIG, rngs=nnx.Rngs(0))
  with tempfile.TemporaryDirectory() as folder:
    hf_io.save_hf_checkpoint(model, folder, architecture="LlamaForCausalLM")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa").train()
  ids = np.random.default_rng(0).integers(
      1, BENCH_CONFIG.vocab_size, (args.batch, args.seq_len)).astype(np.int32)
  tokens = args.batch * args.seq_len
  flops = train_flops(BENCH_CONFIG, tokens)
  peak = matmul_peak_flops()

  compile_s, ours_s, ours_loss = bench_ours(model, ids, args.repeats)
  hf_s, hf_loss = bench_hf(hf_model, ids, args.repeats)
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  print(f"model: {n_params / 1e6:.1f}M params, batch {args.batch} x "
        f"{args.seq_len} tokens, AdamW + clipping, f32; "
        f"measured f32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
        f"first-step loss ours {ours_loss:.4f} / HF {hf_loss:.4f}")
  header = (f"{'impl':>5} | {'step s':>7} | {'tokens/s':>9} | "
            f"{'GFLOP/s':>8} | {'share of peak':>13}")
  print(header)
  print("-" * len(header))
  for name, seconds in (("ours", ours_s), ("HF", hf_s)):
    print(f"{name:>5} | {seconds:>7.3f} | {tokens / seconds:>9.0f} | "
          f"{flops / seconds / 1e9:>8.1f} | {flops / seconds / peak:>12.0%}")
  print(f"ours: compile + first step {compile_s:.1f} s")
  print(f"RESULT train_speedup {hf_s / ours_s:.3f}")
  print(f"RESULT train_flops_share {flops / ours_s / peak:.3f}")


if __name__ == "__main__":
  main()
