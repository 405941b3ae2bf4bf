"""What policy SFT makes of one iteration's verified traces, over its
settings.

From the latest checkpoint of a `python -m restmcts_jax.main` workdir (one
written after an evaluation), the traces of iteration `--iteration` are
collected as the loop's `collect` phase collects them (the run's
`config.mode`, or `--mode`; `--search` overrides `config.search`; `--traces`
keeps a random subset of them, so that two collectors can be compared at an
equal number of traces), then the policy is fine-tuned on them as the loop's
`train` phase does, with `config.train` and with each `--variants` setting
over it, all in this process. Each policy then answers the held-out
puzzles: greedy accuracy, and from `--samples` sampled solutions per puzzle
pass@1 (the share that is correct), pass@N and Self-Consistency@N. "no SFT"
is the checkpoint's policy:

    python bench/policy_sft.py --workdir runs/game24_em --iteration 4 \
        --variants "steps300:policy_steps=300;lr1e-4:learning_rate=1e-4"

Only the policy is trained (value training does not change it). With
`--split test --samples <eval.budget>` the `config.train` row is the loop's
own evaluation of that iteration: the same greedy, SC and sample accuracy and
policy loss, to the digit. Tune on the validation puzzles (the default).
Ends with `RESULT pass1_<row> <pass@1>` per row.
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import oracle_value  # pylint: disable=g-import-not-at-top
from restmcts_jax import checkpoint
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax import selftrain
from restmcts_jax.search import mcts_star

# The `config.train` keys that policy SFT reads.
SFT_KEYS = ("policy_steps", "batch_size", "learning_rate", "replay")
BASELINE = "no SFT"


def parse_variants(text: str) -> dict[str, dict]:
  """`"a:policy_steps=300;b:learning_rate=1e-4"` -> {"a": {...}, ...} over
  SFT_KEYS, values Python literals."""
  return oracle_value.parse_variants(text, SFT_KEYS, section="config.train")


def random_subset(items: list, count: int, *, seed: int) -> list:
  """`count` of `items` drawn without replacement, in their order (all of
  them when `count` is 0 or not below their number)."""
  if not 0 < count < len(items):
    return list(items)
  keep = np.random.default_rng(seed).choice(len(items), count, replace=False)
  return [items[i] for i in sorted(keep)]


def held_out_scores(loop: selftrain.Loop, state, *, samples: int,
                    seed: int) -> dict[str, float]:
  """Greedy accuracy and, from `samples` sampled solutions per held-out
  problem, pass@1, pass@N and SC@N of `state`'s policy."""
  results, _ = evaluation.evaluate(
      loop.models(state), loop.eval_context, loop.data.test,
      methods=("greedy", "sc"), budgets=(samples,), seed=seed)
  greedy, sc = results
  return dict(greedy=greedy.accuracy, pass1=sc.sample_accuracy,
              pass_n=float(np.mean(sc.per_problem["correct_samples"] > 0)),
              sc=sc.accuracy)


def fine_tune(loop: selftrain.Loop, state, traces, iteration: int,
              settings: dict):
  """The loop's `train` phase on `traces` with `settings` over
  `config.train`, the policy only: `(state, mean SFT loss)`."""
  train_config = copy.deepcopy(loop.config.train)
  train_config.update(settings)
  meta = dict(current={})
  state, _ = loop.train(jax.tree.map(jnp.copy, state),  # steps donate
                        selftrain.Buffers(traces=list(traces)), meta,
                        iteration, train_config)
  return state, meta["current"]["policy_loss"]


def measure(workdir, iteration: int, variants: dict[str, dict], *,
            mode: str = "", search: str = "", samples: int = 16,
            split: str = "validation", max_traces: int = 0, log=print):
  """`(what collect found, {row: scores})`: the traces of `iteration`
  collected from `workdir`'s latest checkpoint, the policy fine-tuned on
  them with each of `variants` (settings over `config.train`), and each
  policy's `held_out_scores` with its SFT loss ("no SFT": the checkpoint's
  policy). `max_traces` > 0 keeps that many of the traces, drawn at random
  (seeded by the iteration)."""
  workdir = experiment.workdir_path(workdir)
  config = experiment.load_config(workdir)
  config.eval.split = split
  if mode:
    if mode not in selftrain.MODES:
      raise ValueError(f"--mode={mode}: choose from {selftrain.MODES}")
    config.mode = mode
  config.search.update(oracle_value.parse_overrides(
      search, set(mcts_star.MCTSConfig.__dataclass_fields__) &
      set(config.search), flag="--search", section="config.search"))
  checkpoints = checkpoint.Checkpointer(workdir / "checkpoints")
  try:
    loop = selftrain.Loop(config, workdir, checkpoints)
    loop.outputs = selftrain.Outputs(workdir, enabled=False)  # no tree pages
    step = checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {workdir}")
    state, _, meta = checkpoints.restore(
        checkpoint.abstract_like(loop.initial_state, loop.shardings), step)
  finally:
    checkpoints.close()
  phase = selftrain.schedule(config.iterations)[meta["phase"]]
  if phase[0] != "eval":
    raise ValueError(f"{workdir}: checkpoint {step} was written after phase "
                     f"{phase}, not after an evaluation")

  start = time.time()
  collected = {"current": {}}
  _, buffers = loop.collect(state, selftrain.Buffers(), collected, iteration)
  found = collected["current"]
  log(f"collected {found['traces']} traces ({config.mode}, solved "
      f"{found['search_solved']:.3f}) in {time.time() - start:.0f} s")
  traces = random_subset(buffers.traces, max_traces, seed=iteration)
  found["used"] = len(traces)
  seed = config.seed + 7919 * iteration  # the loop's evaluation seed
  scores = {BASELINE: dict(loss=float("nan"), **held_out_scores(
      loop, state, samples=samples, seed=seed))}
  for name, settings in variants.items():
    start = time.time()
    tuned, loss = fine_tune(loop, state, traces, iteration, settings)
    scores[name] = dict(loss=loss, **held_out_scores(
        loop, tuned, samples=samples, seed=seed))
    log(f"{name}: fine-tuned and evaluated in {time.time() - start:.0f} s")
  return dict(found, mode=config.mode, problems=len(loop.data.test)), scores


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a run of restmcts_jax.main")
  parser.add_argument("--iteration", type=int, required=True,
                      help="whose training questions, keys and SFT seed")
  parser.add_argument("--variants", default="",
                      help="name:key=value,...;... over config.train "
                      f"({', '.join(SFT_KEYS)})")
  parser.add_argument("--mode", default="",
                      help="collect as rest_mcts or rest_em (default: the "
                      "run's config.mode)")
  parser.add_argument("--search", default="",
                      help="key=value,... over config.search when searching")
  parser.add_argument("--samples", type=int, default=16,
                      help="sampled solutions per held-out problem")
  parser.add_argument("--split", default="validation",
                      help="held-out puzzles: validation or test")
  parser.add_argument("--traces", type=int, default=0,
                      help="fine-tune on this many of the collected traces, "
                      "a random subset (default 0: all)")
  args = parser.parse_args()
  if args.samples < 1:
    raise ValueError(f"--samples={args.samples}: at least 1")
  if args.traces < 0:
    raise ValueError(f"--traces={args.traces}: 0 (all) or more")
  variants = {"config.train": {}, **parse_variants(args.variants)}
  found, scores = measure(
      args.workdir, args.iteration, variants, mode=args.mode,
      search=args.search, samples=args.samples, split=args.split,
      max_traces=args.traces, log=lambda text: print(text, flush=True))

  print(f"\n{found['problems']} {args.split} problems, {args.samples} "
        f"samples each; {found['traces']} traces of iteration "
        f"{args.iteration} ({found['mode']}; SFT on {found['used']}), "
        f"{args.workdir}")
  header = (f"{'policy':14s} | SFT loss | greedy | pass@1 | "
            f"pass@{args.samples:<3d}| SC@{args.samples}")
  print(header + "\n" + "-" * len(header))
  for name, s in scores.items():
    print(f"{name:14s} | {s['loss']:8.3f} | {s['greedy']:6.3f} | "
          f"{s['pass1']:6.4f} | {s['pass_n']:7.3f} | {s['sc']:.3f}")
  for name, settings in variants.items():
    if settings:
      print(f"{name}: {settings}")
  for name, s in scores.items():
    print(f"RESULT pass1_{name.replace(' ', '_')} {s['pass1']:.4f}")


if __name__ == "__main__":
  main()
