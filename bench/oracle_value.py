"""MCTS* and Best-of-N on Game of 24 with the learned value model and with an
exact one: how much the value model's judgement keeps MCTS* from the paper.

The exact value reads each partial solution's text. A step that breaks the
rules, or numbers left from which 24 cannot be made, score 0; a position from
which 24 is still reachable scores depth / max_depth (Eq. 1-2's labels along a
correct path); a final answer scores 1 if the verifier accepts it, else 0. It
replaces the value model both while MCTS* searches and when Best-of-N picks,
so its rows are an upper bound, not a method: they consult the verifier
before answering. Both value functions run side by side in this process, on
a checkpoint of `python -m restmcts_jax.main --config configs/game24.py`,
over the validation puzzles (`--split test` to report, not to tune):

    python bench/oracle_value.py --workdir runs/game24 --budgets 4,8,16

After each MCTS* run it also reports, judged by the exact value, where the
trees of the largest budget spent their expansions: the distinct first moves
per tree, the share of trees that hold no winnable position at all, and the
share of expansions made at lost positions.

`--values split` answers with the learned value model, except that a copy
of it trained on `D_V0`'s first steps alone (`--split_steps`) judges the
positions one step in: a learned V that ranks first moves well.

`--search key=value,...` overrides the checkpoint's `eval.search` settings, and
`--methods` / `--values` narrow what runs, so the search's own settings can be
tuned against the exact value, apart from the value model's errors.
Ends with `RESULT oracle_mcts_minus_bon <MCTS* - Best-of-N, exact value, at
the largest budget>`.
"""

import argparse
import ast
import dataclasses
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from restmcts_jax import evaluation  # pylint: disable=g-import-not-at-top
from restmcts_jax import experiment
from restmcts_jax.search import tree as tree_lib
from restmcts_jax.tasks import game24

# `game24.question_text`'s line, read back.
_QUESTION_RE = re.compile(rf"Use ([\d ]+) to make {game24.TARGET}\.")


def steps_taken(text: str) -> int:
  """The step lines of a question + partial solution text (the Answer line
  counts)."""
  return sum(1 for line in text.split("\n")[1:] if line.strip())


def exact_value(text: str, max_depth: int) -> float:
  """The exact value of a question + partial solution text (see above); 0
  for a row without a question (MCTS* pads rows it does not need)."""
  question, *lines = text.split("\n")
  match = _QUESTION_RE.match(question)
  if match is None:
    return 0.0
  numbers = [int(n) for n in match.group(1).split()]
  steps = [line for line in lines if line.strip()]
  left = numbers
  for step in steps:
    if step.startswith("Answer:"):
      return float(game24.verify(numbers, text))
    left = game24.check_step(left, step)
    if left is None:
      return 0.0
  return len(steps) / max_depth if game24.is_solvable(left) else 0.0


class ExactValue(nnx.Module):
  """`ValueModel`'s interface over `exact_value`, computed on the host."""

  def __init__(self, tokenizer, max_depth: int):
    self.tokenizer = tokenizer
    self.max_depth = max_depth

  def _values(self, rows) -> np.ndarray:
    """`[R]` values of token rows (lists of ids)."""
    return np.array([exact_value(self.tokenizer.decode(list(map(int, row))),
                                 self.max_depth) for row in rows], np.float32)

  def __call__(self, tokens, lengths):
    """`[B]` values of whole rows (Best-of-N's pick)."""
    rows = lambda tokens, lengths: self._values(
        row[:n] for row, n in zip(np.asarray(tokens), np.asarray(lengths)))
    return jax.pure_callback(
        rows, jax.ShapeDtypeStruct(lengths.shape, jnp.float32), tokens,
        lengths)

  def score_continuations(self, prefix, lengths, steps, step_lengths,
                          num_samples):
    """`[R * k]` values of prefix + step (MCTS*'s expansions)."""
    def values(prefix, lengths, steps, step_lengths):
      prefix = np.repeat(np.asarray(prefix), num_samples, axis=0)
      lengths = np.repeat(np.asarray(lengths), num_samples)
      return self._values(
          np.concatenate([p[:n], s[:m]]) for p, n, s, m in zip(
              prefix, lengths, np.asarray(steps), np.asarray(step_lengths)))
    return jax.pure_callback(
        values, jax.ShapeDtypeStruct(step_lengths.shape, jnp.float32),
        prefix, lengths, steps, step_lengths)


class FirstStepSplitValue(nnx.Module):
  """`ValueModel`'s interface over two value models: `first` judges the
  positions one step in, `rest` every other (steps counted on the host from
  the text). Both score every row; the depth picks."""

  def __init__(self, first, rest, tokenizer):
    self.first = first
    self.rest = rest
    self.tokenizer = tokenizer

  def _steps(self, tokens, lengths):
    """`[B]` step lines of right-padded rows, computed on the host."""
    def count(tokens, lengths):
      return np.array(
          [steps_taken(self.tokenizer.decode(list(map(int, row[:n]))))
           for row, n in zip(np.asarray(tokens), np.asarray(lengths))],
          np.int32)
    return jax.pure_callback(
        count, jax.ShapeDtypeStruct(lengths.shape, jnp.int32), tokens,
        lengths)

  def __call__(self, tokens, lengths):
    return jnp.where(self._steps(tokens, lengths) == 1,
                     self.first(tokens, lengths), self.rest(tokens, lengths))

  def score_continuations(self, prefix, lengths, steps, step_lengths,
                          num_samples):
    """Continuations of a bare question are first steps."""
    first = jnp.repeat(self._steps(prefix, lengths) == 0, num_samples)
    score = lambda model: model.score_continuations(
        prefix, lengths, steps, step_lengths, num_samples)
    return jnp.where(first, score(self.first), score(self.rest))


def first_step_value(value_model, config, tokenizer, steps: int, seed: int):
  """`FirstStepSplitValue` whose `first` is a copy of `value_model` trained
  `steps` more on `D_V0`'s first-step records alone (which it then ranks
  far better, at the cost of the other steps: BENCHMARKS.md)."""
  # Imported here: value_ranking imports this module.
  from bench import value_ranking  # pylint: disable=g-import-not-at-top
  rows, targets, depth = experiment.initial_value_records(
      config, experiment.load_data(config), tokenizer)
  keep = np.flatnonzero(np.asarray(depth) == 1)
  settings = dict(steps=steps, learning_rate=3e-4, batch_size=32,
                  loss=config.train.value_loss)
  first = value_ranking.train_further(
      value_model, [rows[i] for i in keep],
      np.asarray(targets, np.float32)[keep], settings, seed=seed)
  return FirstStepSplitValue(first, value_model, tokenizer)


def tree_statistics(result, tokenizer, max_depth: int) -> dict[str, float]:
  """Where a batch of MCTS* searches (a `SearchResult`) spent expansions,
  judged by `exact_value`: `first_moves`, distinct children of the root per
  tree; `no_winnable`, the share of trees without an unfinished position
  from which 24 is reachable; `lost_expansions`, the share of expansions
  made at unfinished positions from which it is not."""
  result = jax.device_get(result)
  tree = result.tree
  used = np.asarray(tree.used)
  tokens, lengths, _ = tree_lib.prefix_rows(tree, used, max_depth=max_depth)
  values = np.zeros(used.shape, np.float32)
  values[used] = [exact_value(tokenizer.decode(list(map(int, row[:n]))),
                              max_depth) for row, n in zip(tokens, lengths)]
  unfinished = used & ~np.asarray(tree.final)
  unfinished[:, tree_lib.ROOT_INDEX] = False  # the question: winnable
  expansions = np.asarray(result.expansions)
  lost = expansions * (unfinished & (values == 0))
  return {
      "first_moves": float(np.mean(
          np.sum(np.asarray(tree.children)[:, tree_lib.ROOT_INDEX] >= 0,
                 axis=1))),
      "no_winnable": float(np.mean(~np.any(unfinished & (values > 0),
                                           axis=1))),
      "lost_expansions": float(lost.sum() / max(expansions.sum(), 1)),
  }


def parse_overrides(text: str, keys, *, flag: str = "--search",
                    section: str = "eval.search") -> dict:
  """`"branch=2,exploration=0.2"` -> {"branch": 2, "exploration": 0.2},
  each key one of `keys` (of `section`; errors name `flag`), each value a
  Python literal (`true` / `false` too)."""
  overrides = {}
  for item in filter(None, (i.strip() for i in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or key not in keys:
      raise ValueError(f"{flag} {item!r}: expected key=value with a key of "
                       f"{section} ({', '.join(sorted(keys))})")
    value = {"true": "True", "false": "False"}.get(value.lower(), value)
    overrides[key] = ast.literal_eval(value)
  return overrides


def parse_variants(text: str, keys, *, section: str) -> dict[str, dict]:
  """`--variants` of a bench: `"a:k=v,...;b:k=v"` -> {"a": {...}, ...},
  each variant's settings as `parse_overrides` reads them."""
  variants = {}
  for item in filter(None, (i.strip() for i in text.split(";"))):
    name, sep, settings = item.partition(":")
    if not sep or not name:
      raise ValueError(f"--variants {item!r}: expected name:key=value,...")
    variants[name] = parse_overrides(
        settings, keys, flag=f"--variants {name}:", section=section)
  return variants


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a game24 run of restmcts_jax.main")
  parser.add_argument("--budgets", default="4,8,16",
                      help="CoT samples' worth of policy tokens")
  parser.add_argument("--seeds", type=int, default=2,
                      help="evaluation seeds averaged")
  parser.add_argument("--mcts_iterations", type=int, default=64,
                      help="MCTS* iteration cap (64: budgets up to 16)")
  parser.add_argument("--search", default="",
                      help="eval.search overrides, e.g. unvisited_bonus=0.3")
  parser.add_argument("--methods", default="bon,mcts",
                      help="bon, mcts or both")
  parser.add_argument("--values", default="learned,exact",
                      help="learned, exact, split (the learned V with its "
                           "first-step judgements from a copy trained on "
                           "first steps alone), comma-separated")
  parser.add_argument("--split_steps", type=int, default=2400,
                      help="training steps of split's first-step copy")
  parser.add_argument("--split", default="validation",
                      choices=("validation", "test"),
                      help="tune on validation; test only to report")
  args = parser.parse_args()
  budgets = experiment.parse_budgets(args.budgets)
  methods = experiment.parse_methods(args.methods, key="--methods")
  value_names = [v for v in args.values.split(",") if v]
  if not set(methods) <= {"bon", "mcts"}:
    raise ValueError(f"--methods={args.methods}: choose from bon,mcts")
  if not value_names or not set(value_names) <= {"learned", "exact", "split"}:
    raise ValueError(f"--values={args.values}: choose from learned,exact,"
                     "split")

  config, tokenizer, (policy, learned), _ = experiment.restore(args.workdir)
  if config.task != "game24":
    raise ValueError(f"{args.workdir}: task {config.task!r}, not game24")
  with config.unlocked():
    config.eval.split = args.split
    config.eval.mcts_iterations = args.mcts_iterations
    config.eval.search.update(
        parse_overrides(args.search, experiment.EVAL_SEARCH_KEYS))
  problems = experiment.load_data(config, warm_start=False).test
  context = dataclasses.replace(experiment.eval_context(config, tokenizer),
                                cache_nodes=False)
  make = {"learned": lambda: learned,
          "exact": lambda: ExactValue(tokenizer, config.max_depth),
          "split": lambda: first_step_value(learned, config, tokenizer,
                                            args.split_steps, seed=0)}
  values = {name: make[name]() for name in value_names}

  rows = {}  # (method, value, budget) -> [(accuracy, policy tokens)]
  trees = {}  # value -> [tree_statistics of the largest budget's searches]
  for value_name, value_model in values.items():
    for seed in range(args.seeds):
      results, search = evaluation.evaluate(
          (policy, value_model), context, problems, methods=methods,
          budgets=budgets, seed=seed)
      for r in results:
        rows.setdefault((r.method, value_name, r.samples), []).append(
            (r.accuracy, r.policy_tokens))
        print(f"{value_name} seed {seed}: {r.method}@{r.samples} "
              f"{r.accuracy:.3f} ({r.policy_tokens:.0f} tokens)", flush=True)
      if search is not None:  # the first batch's, padding rows dropped
        search = jax.tree.map(lambda x: x[:len(problems)], search)
        trees.setdefault(value_name, []).append(
            tree_statistics(search, tokenizer, config.max_depth))
        print(f"{value_name} seed {seed}: mcts@{max(budgets)} trees "
              f"{trees[value_name][-1]}", flush=True)

  print(f"\n{len(problems)} {args.split} puzzles, mean of {args.seeds} seeds: "
        "accuracy (policy tokens per puzzle)")
  header = f"{'method':10s} | {'value':7s} | " + " | ".join(
      f"budget {b:>2d}      " for b in budgets)
  print(header + "\n" + "-" * len(header))
  mean = lambda key: np.mean(rows[key], axis=0)
  for method in methods:
    for value_name in values:
      cells = [mean((method, value_name, b)) for b in budgets]
      print(f"{method:10s} | {value_name:7s} | " + " | ".join(
          f"{a:.3f} ({t:4.0f})" for a, t in cells))
  top = max(budgets)
  if trees:
    print(f"\nMCTS* trees at budget {top}, judged by the exact value: "
          "first moves per tree | trees with no winnable position | "
          "expansions at lost positions")
    for value_name, stats in trees.items():
      mean_stat = lambda k: np.mean([s[k] for s in stats])
      print(f"{value_name:7s} | {mean_stat('first_moves'):.2f} | "
            f"{mean_stat('no_winnable'):.3f} | "
            f"{mean_stat('lost_expansions'):.3f}")
  if {"mcts", "bon"} <= set(methods) and "exact" in values:
    gap = mean(("mcts", "exact", top))[0] - mean(("bon", "exact", top))[0]
    print(f"RESULT oracle_mcts_minus_bon {gap:.3f}")
  for value_name in values:
    for method in methods:
      print(f"RESULT accuracy_{method}_{value_name}_{top} "
            f"{mean((method, value_name, top))[0]:.3f}")


if __name__ == "__main__":
  main()
