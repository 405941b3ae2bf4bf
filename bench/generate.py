"""Generation speed: our jitted KV-cache sampler vs `transformers` generate.

Both run greedy decoding on the SAME weights (ours exported to a Llama
checkpoint and loaded by `transformers`), same prompts and number of new
tokens, on this machine's CPU. Compile time is reported separately.

    python bench/generate.py                      # batch 1, 16, 64
    python bench/generate.py --batch_sizes 64 --new_tokens 32

Ends with one line per batch size: `RESULT generate_speedup_b<B> <ours/HF>`.
"""

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from restmcts_jax import sampling
from restmcts_jax.models import hf_io
from restmcts_jax.models import transformer as transformer_lib

# ~16M parameters: Llama layout with GQA, untied embeddings.
BENCH_CONFIG = transformer_lib.TransformerConfig(
    vocab_size=8192, embed_dim=384, num_layers=6, num_heads=6, num_kv_heads=2,
    head_dim=64, mlp_dim=1024, rope_theta=10_000.0, norm_eps=1e-5)


def model_flops(config, batch, prompt_len, new_tokens):
  """Matmul FLOPs of generation (attention scores left out): every token
  passes the layers once, and every new token also the LM head."""
  c = config
  per_layer = c.embed_dim * c.head_dim * 2 * (c.num_heads + c.num_kv_heads)
  per_layer += 3 * c.embed_dim * c.mlp_dim
  layers = c.num_layers * per_layer
  head = c.embed_dim * c.vocab_size
  return 2 * batch * ((prompt_len + new_tokens) * layers + new_tokens * head)


def matmul_peak_flops(repeats=20):
  """Measured f32 matmul FLOP/s of this machine (JAX, a 4096x384x1024 GEMM)."""
  a, b = jnp.ones((4096, 384)), jnp.ones((384, 1024))
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  seconds = _median_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
  return 2 * 4096 * 384 * 1024 / seconds


def _median_seconds(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_ours(graphdef, state, prompts, new_tokens, repeats):
  """Returns (compile seconds, run seconds, tokens [B, new_tokens])."""
  batch, length = prompts.shape
  config = sampling.SamplerConfig(max_step_len=new_tokens, temperature=0.0)
  prefix = jnp.asarray(prompts)
  lengths = jnp.full((batch,), length, jnp.int32)
  keys = jax.random.split(jax.random.key(0), batch)
  args = (graphdef, state, prefix, lengths, keys, config)
  start = time.perf_counter()
  out = sampling.sample_step(*args)
  out.tokens.block_until_ready()
  compile_s = time.perf_counter() - start
  run = lambda: sampling.sample_step(*args).tokens.block_until_ready()
  return compile_s, _median_seconds(run, repeats), np.asarray(out.tokens)


def bench_hf(model, prompts, new_tokens, repeats):
  """Returns (run seconds, tokens [B, new_tokens])."""
  ids = torch.from_numpy(prompts.astype(np.int64))
  mask = torch.ones_like(ids)

  def run():
    with torch.inference_mode():
      return model.generate(
          input_ids=ids, attention_mask=mask, do_sample=False,
          max_new_tokens=new_tokens, min_new_tokens=new_tokens,
          pad_token_id=0, eos_token_id=None)

  out = run()  # warm-up
  return _median_seconds(run, repeats), out[:, prompts.shape[1]:].numpy()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16, 64])
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  model = transformer_lib.Transformer(BENCH_CONFIG, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  num_params = sum(x.size for x in jax.tree.leaves(state))
  with tempfile.TemporaryDirectory() as folder:
    hf_io.save_hf_checkpoint(model, folder, architecture="LlamaForCausalLM")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa").eval()

  print(f"model: {num_params / 1e6:.1f}M params, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy, f32, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
  peak = matmul_peak_flops()
  print(f"measured f32 matmul peak: {peak / 1e9:.0f} GFLOP/s")
  header = (f"{'batch':>5} | {'ours tok/s':>10} | {'HF tok/s':>9} | "
            f"{'speedup':>7} | {'ours GFLOP/s':>12} | {'HF GFLOP/s':>10} | "
            f"{'ours compile s':>14} | {'same tokens':>11}")
  print(header)
  print("-" * len(header))
  rng = np.random.default_rng(0)
  results = {}
  for batch in args.batch_sizes:
    prompts = rng.integers(1, BENCH_CONFIG.vocab_size,
                           (batch, args.prompt_len)).astype(np.int32)
    compile_s, ours_s, ours_tokens = bench_ours(
        graphdef, state, prompts, args.new_tokens, args.repeats)
    hf_s, hf_tokens = bench_hf(hf_model, prompts, args.new_tokens, args.repeats)
    tokens = batch * args.new_tokens
    speedup = hf_s / ours_s
    results[batch] = speedup
    agree = float(np.mean(ours_tokens == hf_tokens))
    flops = model_flops(BENCH_CONFIG, batch, args.prompt_len, args.new_tokens)
    print(f"{batch:>5} | {tokens / ours_s:>10.0f} | {tokens / hf_s:>9.0f} | "
          f"{speedup:>6.2f}x | {flops / ours_s / 1e9:>12.0f} | "
          f"{flops / hf_s / 1e9:>10.0f} | {compile_s:>14.1f} | {agree:>10.1%}")
  print("ours also feeds each step's last token once more (its hidden state is "
        "what the value head reads), one forward pass more than HF; "
        "'compile s' includes one run.")
  for batch, speedup in results.items():
    print(f"RESULT generate_speedup_b{batch} {speedup:.3f}")


if __name__ == "__main__":
  main()
