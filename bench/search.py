"""MCTS* speed: one batched, jitted search vs a per-node sequential driver.

Both run the same MCTS* settings on the same small LM (policy + value model on
a copy of its backbone), on JAX's default device:
  * cached     — `mcts_star.search_lm`: all questions at once, one policy call
                 and one value call per phase for every question, and every
                 node's step keys/values kept, so no prefix is re-encoded;
  * re-encode  — the same, re-encoding each prefix per call
                 (`cache_nodes=False`, less memory);
  * per-node   — `sequential.SequentialSearch`: questions one after another,
                 one jitted model call per proposed step and per scored prefix
                 (the pattern of the PyTorch reference implementation), with
                 prefixes padded to a multiple of 16 tokens (all widths are
                 compiled before timing).
The share of the batched search's wall time spent outside model calls is
estimated by running the same search with free toy models (same shapes, no
LM): that is the cost of selection, back-up and tree bookkeeping.

    python bench/search.py                        # 1, 8 and 64 questions
    python bench/search.py --questions 8 --sequential_questions 2
    python bench/search.py --questions 64 --sequential_questions 2 \
        --rounds 1 --drivers cached               # on a GPU

Ends with `RESULT search_speedup_q64 <cached / per-node>` (questions per
second; the per-node driver's rate is measured on a few questions, since it
runs one question at a time, after one untimed run): the median over
`--rounds` of the ratio of a batched run to the per-node run just before it.
The table shows median runs; progress lines with elapsed time come first.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from restmcts_jax import sampling
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.models import value_head
from restmcts_jax.search import mcts_star
from restmcts_jax.search import sequential

# ~3M parameters: the CPU-default scale of DESIGN.md.
MODEL = transformer_lib.TransformerConfig(
    vocab_size=256, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
    head_dim=64, mlp_dim=768)
QUESTION_LEN = 16
SEARCH = mcts_star.MCTSConfig(
    num_iterations=10, branch=3, roll_branch=1, roll_forward_steps=2,
    max_depth=5, max_step_len=12, stop_at_end_gate=False,
    random_ties=False)  # as the per-node driver: the same trees
# A random model rarely emits a given token: 1 in 8 ids ends a step.
SAMPLER = sampling.SamplerConfig(
    max_step_len=SEARCH.max_step_len, temperature=1.0,
    stop_token_ids=tuple(range(0, MODEL.vocab_size, 8)), eos_token_id=1,
    answer_marker_ids=(2,))


def _models():
  policy = transformer_lib.Transformer(MODEL, rngs=nnx.Rngs(0))
  value_model = value_head.make_value_model(policy, share_backbone=False,
                                            rngs=nnx.Rngs(1))
  value_model.head.kernel.set_value(
      jax.random.normal(jax.random.key(2), (MODEL.embed_dim,)))
  return policy, value_model


def _questions(n):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, MODEL.vocab_size, (n, QUESTION_LEN)).astype(np.int32)
  return jnp.asarray(tokens), jnp.full((n,), QUESTION_LEN, jnp.int32)


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def batched_search(graphdef, state, n, cache_nodes):
  """(compile s, run) where `run()` times one search of n questions:
  (run s, iterations, policy tokens)."""
  q, ql = _questions(n)
  keys = jax.random.split(jax.random.key(0), n)
  search = lambda: mcts_star.search_lm(graphdef, state, q, ql, keys, SAMPLER,
                                       SEARCH, cache_nodes=cache_nodes)
  _, compile_s = _timed(search)

  def run():
    out, run_s = _timed(search)
    return run_s, int(out.iterations.sum()), int(out.policy_tokens.sum())
  return compile_s, run


def bench_bookkeeping(n):
  """Run seconds of the same search with free models of the same shapes."""
  def policy_fn(prefix, lengths, keys, k):
    r = prefix.shape[0] * k
    t = jax.vmap(lambda key: jax.random.randint(
        key, (SEARCH.max_step_len,), 3, MODEL.vocab_size))(keys)
    return mcts_star.Proposals(tokens=t, lengths=jnp.full((r,), 6),
                               is_final=jax.vmap(
                                   lambda key: jax.random.bernoulli(key, 0.1))(
                                       keys))

  value_fn = mcts_star.concat_value_fn(
      lambda tokens, lengths: (jnp.sum(tokens, 1) % 97) / 97.0)

  q, ql = _questions(n)
  keys = jax.random.split(jax.random.key(0), n)
  run = jax.jit(lambda: mcts_star.search(mcts_star.TokenModels(policy_fn, value_fn), q, ql, keys,
                                         SEARCH))
  _timed(run)
  return _timed(run)[1]


def sequential_search(policy, value_model, n):
  """`run()` timing the per-node driver on n questions: (run s, iterations,
  policy tokens)."""
  graphdef, state = nnx.split(policy)
  width = QUESTION_LEN + (SEARCH.max_depth + SEARCH.roll_forward_steps + 1) * (
      SEARCH.max_step_len)
  value_step = jax.jit(lambda vm, t, l: vm(t, l))
  key = [jax.random.key(1)]

  def padded(prefix):
    bucket = -(-len(prefix) // 16) * 16
    return jnp.asarray([prefix + [0] * (bucket - len(prefix))], jnp.int32)

  def propose(prefix, j):
    del j
    key[0], sub = jax.random.split(key[0])
    out = sampling.sample_step(graphdef, state, padded(prefix),
                               jnp.array([len(prefix)]), sub[None], SAMPLER)
    n_tok = int(out.lengths[0])
    return list(np.asarray(out.tokens[0, :n_tok])), bool(out.is_final[0])

  def score(prefix):
    return float(value_step(value_model, padded(prefix),
                            jnp.array([len(prefix)]))[0])

  config = dict(b=SEARCH.branch, d=SEARCH.roll_branch,
                m=SEARCH.roll_forward_steps, c=SEARCH.exploration,
                alpha=SEARCH.alpha, inf=SEARCH.unvisited_bonus,
                end_gate=SEARCH.end_gate,
                stop_at_end_gate=SEARCH.stop_at_end_gate,
                max_depth=SEARCH.max_depth, score_merged=True)
  questions = np.asarray(_questions(n)[0])
  for length in range(16, width + 1, 16):  # compile every width
    propose([3] * length, 0)
    score([3] * length)

  def run():
    key[0] = jax.random.key(1)
    start = time.perf_counter()
    iterations = tokens = 0
    for q in questions:
      s = sequential.SequentialSearch(list(q), config, propose, score)
      s.run(SEARCH.num_iterations)
      iterations += s.iterations_run
      tokens += s.policy_tokens
    return time.perf_counter() - start, iterations, tokens
  run()  # untimed: the first run on a GPU is several times slower
  return run


def _progress(start, message):
  """Prints a timestamped progress line at once (the run takes minutes)."""
  print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)


def median_run(runs):
  """The run of median wall time among `runs` (tuples, wall time first)."""
  return sorted(runs)[len(runs) // 2]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--questions", type=int, nargs="+", default=[1, 8, 64])
  parser.add_argument("--sequential_questions", type=int, default=4)
  parser.add_argument("--drivers", nargs="+", default=["re-encode", "cached"],
                      choices=["re-encode", "cached"],
                      help="batched drivers to time (the ratio needs cached)")
  parser.add_argument("--rounds", type=int, default=3,
                      help="timed runs per driver; each batched run is "
                      "paired with a per-node run just before it")
  args = parser.parse_args()
  if "cached" not in args.drivers:
    parser.error("--drivers must include cached (the speedup is cached / "
                 "per-node)")
  args.drivers = list(dict.fromkeys(args.drivers))

  policy, value_model = _models()
  graphdef, state = nnx.split((policy, value_model))
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(policy)))
  print(f"policy and value model: {n_params / 1e6:.1f}M params each; "
        f"{SEARCH.num_iterations} iterations, b={SEARCH.branch}, "
        f"d={SEARCH.roll_branch}, m={SEARCH.roll_forward_steps}, steps <= "
        f"{SEARCH.max_step_len} tokens, question {QUESTION_LEN} tokens; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; median of "
        f"{args.rounds} runs")

  # This machine's speed drifts by tens of percent within minutes: every
  # batched run is paired with a per-node run just before it, and the
  # speedup is the median of the pairs' ratios.
  start = time.perf_counter()
  per_node = sequential_search(policy, value_model, args.sequential_questions)
  _progress(start, "per-node driver compiled (every prefix width) "
            "and warmed up")
  per_node_runs, speedups, rows = [], {}, []
  for n in args.questions:
    bookkeeping_s = bench_bookkeeping(n)
    _progress(start, f"q{n}: bookkeeping-only search timed")
    for name in args.drivers:
      cache_nodes = name == "cached"
      compile_s, run = batched_search(graphdef, state, n, cache_nodes)
      _progress(start, f"q{n}: {name} compiled in {compile_s:.1f} s")
      runs, ratios = [], []
      for _ in range(args.rounds):
        if cache_nodes:
          per_node_runs.append(per_node())
        runs.append(run())
        if cache_nodes:
          seq_q_per_s = args.sequential_questions / per_node_runs[-1][0]
          ratios.append(n / runs[-1][0] / seq_q_per_s)
      _progress(start, f"q{n}: {name} timed")
      if cache_nodes:
        speedups[n] = float(np.median(ratios))
      rows.append((n, name, median_run(runs), bookkeeping_s, compile_s))

  header = (f"{'questions':>9} | {'driver':>9} | {'wall s':>7} | "
            f"{'iter/s':>7} | {'gen tok/s':>9} | {'questions/s':>11} | "
            f"{'outside models':>14} | {'compile s':>9}")
  print(header)
  print("-" * len(header))
  seq_s, seq_iters, seq_tokens = median_run(per_node_runs)
  print(f"{args.sequential_questions:>9} | {'per-node':>9} | {seq_s:>7.1f} | "
        f"{seq_iters / seq_s:>7.1f} | {seq_tokens / seq_s:>9.0f} | "
        f"{args.sequential_questions / seq_s:>11.2f} | {'':>14} | {'':>9}")
  for n, name, (run_s, iters, tokens), bookkeeping_s, compile_s in rows:
    print(f"{n:>9} | {name:>9} | {run_s:>7.1f} | {iters / run_s:>7.1f} | "
          f"{tokens / run_s:>9.0f} | {n / run_s:>11.2f} | "
          f"{bookkeeping_s / run_s:>13.1%} | {compile_s:>9.1f}")
  for n, speedup in speedups.items():
    print(f"RESULT search_speedup_q{n} {speedup:.2f}")


if __name__ == "__main__":
  main()
