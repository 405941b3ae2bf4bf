"""How well a Game of 24 value model tells winnable from lost positions, by
depth: the AUC of V over partial solutions of held-out puzzles.

MCTS* follows V from the first step on, so a value model that ranks only
late positions well steers the search no better than chance where the tree
branches most. Positions come from two sources, `--per_puzzle` of each per
held-out puzzle (validation by default; `--split test` to report): random
legal games (truth: a position after k < 4 steps is winnable iff its numbers
can still make 24, `game24.is_solvable`; a final answer iff the verifier
accepts it), and solutions sampled from the checkpoint's policy as a search
samples them (truth: `oracle_value.exact_value`, so a wrong step loses).
AUC is the chance that a winnable position scores above a lost one of the
same depth (ties count half):

    python bench/value_ranking.py --workdir runs/game24 [--values runs/other]

`--values` scores the same positions with other runs' value models.
`--targets` also ranks what value training learns from: the Eq. 1-2 targets
of the trees' records in the checkpoint (`D_V`) and of `--targets` records
drawn from `D_V0`, each against the exact value of its position, and scores
those records with every value model as well (one that ranks its own training
records no better than held-out positions underfits).
`--train "name:key=value,...;..."` also trains copies of the checkpoint's
value model further on `D_V0` (the run's own warm-start records), one row per
variant, all in this process: `steps`, `learning_rate`, `batch_size`,
`depths` (e.g. `1+2`: only records of those depths), `shares` (e.g.
`0.5+0.2+0.15+0.15`: depth k's share of the records, drawn with
replacement), `start=policy` (a fresh value head on the checkpoint's
policy, as the warm start trains), `start=scratch` (a randomly initialized
model of the policy's architecture, resized by `embed_dim`, `num_layers`,
`num_heads`, `num_kv_heads`, `head_dim`, `mlp_dim`) and `loss=cross_entropy`
(`mse` by default; `config.train.value_loss`), and `heads=depth` (one value
head per number of steps taken, on the shared backbone: `DepthHeads`).
Ends with `RESULT value_auc_depth1 <checkpoint's AUC after one step of a
random legal game>`.
"""

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import oracle_value  # pylint: disable=g-import-not-at-top
from restmcts_jax import checkpoint
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax import selftrain
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.models import value_head
from restmcts_jax.tasks import game24
from restmcts_jax.training import batching
from restmcts_jax.training import optim
from restmcts_jax.training import steps as training_steps


@dataclasses.dataclass(frozen=True)
class Positions:
  """Scored prefixes: `texts` (question + steps), their `depth` (steps taken,
  the Answer line included) and whether each is `winnable`."""

  texts: list[str]
  depth: np.ndarray
  winnable: np.ndarray


def random_positions(puzzles, per_puzzle: int, seed: int) -> Positions:
  """Every prefix of `per_puzzle` random legal games of each puzzle."""
  rng = random.Random(seed)
  texts, depth, winnable = [], [], []
  for puzzle in puzzles:
    for _ in range(per_puzzle):
      lines, numbers_left = game24.random_game(puzzle.numbers, rng)
      for k in range(1, len(lines) + 1):
        text = game24.format_text(puzzle.numbers, lines[:k])
        if k < len(lines):
          won = game24.is_solvable(numbers_left[k])
        else:
          won = game24.verify(puzzle.numbers, text)
        texts.append(text)
        depth.append(k)
        winnable.append(won)
  return Positions(texts, np.array(depth), np.array(winnable))


def policy_positions(policy, value_model, config, tokenizer, puzzles,
                     per_puzzle: int, seed: int) -> Positions:
  """Every prefix of `per_puzzle` solutions of each puzzle sampled from the
  policy as the search samples them, labelled by `oracle_value.exact_value`
  (a prefix with a wrong step is lost)."""
  questions, lengths = evaluation.encode_rows(
      tokenizer, [game24.question_text(p.numbers) for p in puzzles],
      config.question_width)
  graphdef, state = nnx.split((policy, value_model))
  out = jax.device_get(evaluation.sample_solutions(
      graphdef, state, questions, lengths,
      evaluation.problem_keys(jax.random.key(seed), range(len(puzzles))),
      sampler_config=experiment.sampler_config_for(config, tokenizer),
      num_samples=per_puzzle, max_depth=config.max_depth, score=False))
  return solution_prefixes(
      [tokenizer.decode(row[:n].tolist())
       for row, n in zip(out.tokens, out.lengths)], config.max_depth)


def solution_prefixes(solutions, max_depth: int) -> Positions:
  """Every prefix of each question + solution text that ends a step,
  labelled by `oracle_value.exact_value`."""
  texts, depth, winnable = [], [], []
  for solution in solutions:
    question, *steps = solution.split("\n")
    steps = [s for s in steps if s.strip()]
    for k in range(1, len(steps) + 1):
      text = question + "\n" + "".join(s + "\n" for s in steps[:k])
      texts.append(text)
      depth.append(k)
      winnable.append(oracle_value.exact_value(text, max_depth) > 0)
  return Positions(texts, np.array(depth), np.array(winnable))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Mann-Whitney AUC (ties count half); nan without both classes."""
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    return float("nan")
  ranks = scipy.stats.rankdata(scores)
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) /
               (n_pos * n_neg))


def score(value_model, tokenizer, texts, batch_size: int = 256) -> np.ndarray:
  """`[len(texts)]` values, in batches of one padded width."""
  rows = [tokenizer.encode(t) for t in texts]
  width = max(map(len, rows))
  graphdef, state = nnx.split(value_model)
  apply = jax.jit(lambda s, t, n: nnx.merge(graphdef, s)(t, n))
  out = []
  for lo in range(0, len(rows), batch_size):
    chunk = rows[lo:lo + batch_size]
    tokens = np.zeros((batch_size, width), np.int32)
    lengths = np.ones((batch_size,), np.int32)
    for i, row in enumerate(chunk):
      tokens[i, :len(row)], lengths[i] = row, len(row)
    out.append(np.asarray(apply(state, tokens, lengths))[:len(chunk)])
  return np.concatenate(out)


def record_positions(texts, max_depth: int) -> Positions:
  """Value records' texts (question + steps, as tokenized), labelled by
  `oracle_value.exact_value`."""
  depth = [oracle_value.steps_taken(t) for t in texts]
  winnable = [oracle_value.exact_value(t, max_depth) > 0 for t in texts]
  return Positions(list(texts), np.array(depth), np.array(winnable))


def tree_records(workdir) -> selftrain.Buffers:
  """The buffers (D_V, D_G) of the workdir's latest checkpoint."""
  folder = experiment.workdir_path(workdir) / "checkpoints"
  checkpoints = checkpoint.Checkpointer(folder)
  try:
    return selftrain.Buffers.from_arrays(checkpoints.read_buffers())
  finally:
    checkpoints.close()


def target_rankings(trees: selftrain.Buffers, initial, tokenizer,
                    max_depth: int, count: int,
                    seed: int) -> dict[str, tuple[np.ndarray, Positions]]:
  """`{name: (targets, positions)}` of the trees' value records and of
  `count` records drawn from `initial`, `D_V0`'s `(rows, targets)`."""
  rows, targets = initial
  picks = np.random.default_rng(seed).choice(len(rows), min(count, len(rows)),
                                             replace=False)
  out = {}
  for name, (rows, targets) in {
      f"trees' D_V ({len(trees.value_rows)})": (trees.value_rows,
                                                trees.value_targets),
      f"D_V0 ({len(picks)} of {len(rows)})": ([rows[i] for i in picks],
                                             [targets[i] for i in picks]),
  }.items():
    if rows:
      out[name] = (np.asarray(targets), record_positions(
          [tokenizer.decode(r) for r in rows], max_depth))
  return out


def print_target_table(title: str,
                       rows: dict[str, tuple[np.ndarray, Positions]]):
  """Prints each row's AUC by depth, with the winnable share of its own
  positions in brackets."""
  depths = sorted({k for _, p in rows.values() for k in p.depth.tolist()})
  width = max(map(len, rows)) + 1
  header = "records".ljust(width) + "".join(
      f" | {'step ' + str(k):>14}" for k in depths)
  print(f"\n{title}\n{header}\n" + "-" * len(header))
  for name, (targets, positions) in rows.items():
    aucs = aucs_by_depth(targets, positions)
    share = lambda k: positions.winnable[positions.depth == k].mean()
    cells = [f"{aucs[k]:.3f} ({share(k):.2f})" if k in aucs else "-"
             for k in depths]
    print(name.ljust(width) + "".join(f" | {c:>14}" for c in cells),
          flush=True)


def aucs_by_depth(values: np.ndarray, positions: Positions) -> dict:
  return {k: auc(values[positions.depth == k],
                 positions.winnable[positions.depth == k])
          for k in sorted(set(positions.depth.tolist()))}


def _choice(key, allowed):
  def parse(value):
    if value not in allowed:
      raise ValueError(f"--train {key}={value}: choose from {allowed}")
    return value
  return parse


# `start=scratch` sizes: the policy's unless given.
SIZE_KEYS = ("embed_dim", "num_layers", "num_heads", "num_kv_heads",
             "head_dim", "mlp_dim")


def start_model(settings, policy, value_model, seed: int):
  """The value model a `--train` variant starts from: the checkpoint's, a
  fresh head on the policy (as the warm start trains), or a new backbone of
  the policy's config with `SIZE_KEYS` overrides, randomly initialized."""
  if settings["start"] == "checkpoint":
    return value_model
  if settings["start"] == "policy":
    return value_head.make_value_model(policy, share_backbone=False,
                                       rngs=nnx.Rngs(seed + 1))
  sizes = {k: settings[k] for k in SIZE_KEYS if settings[k]}
  backbone = transformer_lib.Transformer(
      dataclasses.replace(policy.config, **sizes), rngs=nnx.Rngs(seed + 2))
  return value_head.ValueModel(backbone, rngs=nnx.Rngs(seed + 1))


class DepthHeads(nnx.Module):
  """A value model with one head per number of steps taken, `[D, E]`, on a
  shared backbone; each starts as a copy of `base`'s head. A position's
  steps are its newlines after the question's one line (Game of 24's
  format), counted in its tokens, so it scores as `ValueModel` does."""

  def __init__(self, base: value_head.ValueModel, newline: int,
               num_depths: int):
    self.backbone = base.backbone
    self.newline = newline
    self.kernel = nnx.Param(jnp.tile(base.head.kernel[...][None],
                                     (num_depths, 1)))
    self.bias = nnx.Param(jnp.full((num_depths,), base.head.bias[...]))

  def depth(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """`[B]` steps taken (clipped to the heads) of `tokens [B, T]`."""
    real = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
    steps = jnp.sum((tokens == self.newline) & real, axis=1) - 1
    return jnp.clip(steps, 0, self.kernel.shape[0] - 1)

  def logits(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    last = value_head.last_hidden(self.backbone, tokens, lengths)
    depth = self.depth(tokens, lengths)
    return (jnp.sum(last.astype(jnp.float32) * self.kernel[...][depth], -1)
            + self.bias[...][depth])

  def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(self.logits(tokens, lengths))


def parse_variants(text: str) -> list[tuple[str, dict]]:
  """`"a:steps=800;b:steps=800,depths=1"` -> [(name, settings)]."""
  known = dict(steps=int, learning_rate=float, batch_size=int,
               depths=lambda v: tuple(int(d) for d in v.split("+")),
               shares=lambda v: tuple(float(x) for x in v.split("+")),
               start=_choice("start", ("checkpoint", "policy", "scratch")),
               **{key: int for key in SIZE_KEYS},
               loss=_choice("loss", tuple(training_steps.VALUE_LOSSES)),
               heads=_choice("heads", ("one", "depth")))
  variants = []
  for item in filter(None, (i.strip() for i in text.split(";"))):
    name, _, body = item.partition(":")
    settings = dict(steps=800, learning_rate=3e-4, batch_size=32, depths=(),
                    shares=(), start="checkpoint", loss="mse", heads="one",
                    **dict.fromkeys(SIZE_KEYS, 0))
    for pair in filter(None, body.split(",")):
      key, sep, value = pair.partition("=")
      if not sep or key not in known:
        raise ValueError(f"--train {item!r}: expected key=value with a key "
                         f"of {sorted(known)}")
      settings[key] = known[key](value)
    variants.append((name, settings))
  return variants


def train_further(value_model, rows, targets, settings, seed: int):
  """A copy of `value_model` after `settings["steps"]` AdamW steps (warm-up
  and cosine, as the loop trains) on the records."""
  graphdef, params = nnx.split(value_model)
  params = jax.tree.map(lambda x: x.copy(), params)
  tx = optim.make_optimizer(optim.OptimizerConfig.for_phase(
      settings["learning_rate"], settings["steps"]))
  state = training_steps.init_state(params, tx)
  step = training_steps.make_train_step(
      graphdef, training_steps.VALUE_LOSSES[settings["loss"]], tx)
  batches = list(batching.value_batches(rows, targets,
                                        settings["batch_size"], seed=seed))
  for i in range(settings["steps"]):
    state, _ = step(state, batches[i % len(batches)])
  return nnx.merge(graphdef, state.params)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a game24 run of restmcts_jax.main")
  parser.add_argument("--split", default="validation",
                      choices=("validation", "test"),
                      help="tune on validation; test only to report")
  parser.add_argument("--per_puzzle", type=int, default=16,
                      help="random games, and policy samples, per "
                           "held-out puzzle")
  parser.add_argument("--train", default="",
                      help='variants trained further on D_V0, e.g. '
                           '"more:steps=800;early:steps=800,depths=1+2"')
  parser.add_argument("--values", default="",
                      help="workdirs whose value models also score the "
                           "positions (same task and tokenizer)")
  parser.add_argument("--targets", type=int, default=0,
                      help="also rank the value targets of the trees' "
                           "records in the checkpoint and of this many "
                           "D_V0 records (0: skip)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  variants = parse_variants(args.train)

  config, tokenizer, (policy, value_model), _ = experiment.restore(
      args.workdir)
  if config.task != "game24":
    raise ValueError(f"{args.workdir}: task {config.task!r}, not game24")
  with config.unlocked():
    config.eval.split = args.split
  held_out = getattr(game24.splits(seed=config.seed),
                     args.split)[:config.eval.num_test]
  held_out_title = f"{args.split} puzzles, {{}} ({args.per_puzzle} per puzzle)"
  sources = {
      held_out_title.format("random legal games"): random_positions(
          held_out, args.per_puzzle, args.seed),
      held_out_title.format("the policy's samples"): policy_positions(
          policy, value_model, config, tokenizer, held_out, args.per_puzzle,
          args.seed)}
  if variants or args.targets:
    start = time.perf_counter()
    rows, targets, depth = experiment.initial_value_records(
        config, experiment.load_data(config), tokenizer)
    targets, depth = np.asarray(targets, np.float32), np.asarray(depth)
    print(f"D_V0: {len(rows)} records in {time.perf_counter() - start:.0f} s",
          flush=True)
  if args.targets:
    records = target_rankings(tree_records(args.workdir), (rows, targets),
                              tokenizer, config.max_depth, args.targets,
                              args.seed)
    print_target_table(
        "training records: AUC of their value targets, winnable vs lost "
        "positions, by steps taken (winnable share in brackets)", records)
    # The value models on their own training records too: one that ranks
    # them no better than held-out positions underfits.
    sources.update({f"training records, {name}": positions
                    for name, (_, positions) in records.items()})
  models = {"checkpoint": value_model}
  for workdir in filter(None, args.values.split(",")):
    _, other_tokenizer, (_, models[workdir]), _ = experiment.restore(workdir)
    if other_tokenizer.fingerprint() != tokenizer.fingerprint():
      raise ValueError(f"--values {workdir}: another tokenizer than "
                       f"{args.workdir}'s")
  for name, settings in variants:
    start = time.perf_counter()
    keep = np.flatnonzero(np.isin(depth, settings["depths"] or depth))
    if settings["shares"]:  # depth k + 1 makes shares[k] of the records
      rng = np.random.default_rng(args.seed)
      keep = np.concatenate([
          rng.choice(keep[depth[keep] == k + 1], round(share * len(keep)))
          for k, share in enumerate(settings["shares"]) if share])
    picked = [rows[i] for i in keep], targets[keep]
    start_from = start_model(settings, policy, value_model, config.seed)
    if settings["heads"] == "depth":
      newline, = tokenizer.encode("\n")
      start_from = DepthHeads(start_from, newline, config.max_depth + 1)
    models[name] = train_further(start_from, *picked, settings,
                                 seed=args.seed)
    parameters = sum(x.size for x in jax.tree.leaves(
        nnx.state(models[name], nnx.Param)))
    print(f"{name}: {settings['steps']} steps on {len(picked[0])} records, "
          f"{parameters / 1e6:.1f}M parameters, in "
          f"{time.perf_counter() - start:.0f} s", flush=True)

  width = max(map(len, models)) + 1
  results = {}
  for source, positions in sources.items():
    depths = sorted(set(positions.depth.tolist()))
    print(f"\n{source}: AUC of V, winnable vs lost positions, by steps taken "
          "(winnable share in brackets)")
    header = "value model".ljust(width) + "".join(
        f" | step {k} ({positions.winnable[positions.depth == k].mean():.2f})"
        for k in depths)
    print(header + "\n" + "-" * len(header))
    for name, model in models.items():
      results[source, name] = aucs_by_depth(
          score(model, tokenizer, positions.texts), positions)
      print(name.ljust(width) + "".join(
          f" | {results[source, name][k]:>13.3f}" for k in depths),
          flush=True)
  print("RESULT value_auc_depth1 "
        f"{results[next(iter(sources)), 'checkpoint'][1]:.4f}")


if __name__ == "__main__":
  main()
