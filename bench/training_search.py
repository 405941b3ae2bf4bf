"""What one iteration's training search collects, against ReST-EM's samples
at the same policy tokens.

From a checkpoint of `python -m restmcts_jax.main` (Game of 24), the
questions iteration `--iteration` draws (`selftrain.iteration_problems`) are
searched with the run's `config.search` and with each `--variants` setting
over it, and sampled `rest_em.num_samples` times each as ReST-EM does, all in
this process. Per row: the share of the questions with a verified solution
("solved"), the traces D_G would keep, the D_V records the trees yield and
the policy tokens spent per question:

    python bench/training_search.py --workdir runs/game24 --iteration 4 \
        --values learned,exact --variants "by_value:token_budget=373,\
        roll_forward_steps=0,exploration=0.1,unvisited_bonus=0.0,\
        max_expansions=3,widen_visits=2"

`--values exact` also searches with `oracle_value.ExactValue` (it consults
the verifier: an upper bound on what the value model could steer the search
to, not a method). Searches run without node caches (the exact value reads
tokens), which reproduces the loop's `collect` to the digit. Ends with
`RESULT search_minus_sampling_solved <config.search's solved share minus
sampling's, learned value>`.
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import oracle_value  # pylint: disable=g-import-not-at-top
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax import selftrain
from restmcts_jax.search import mcts_star
from restmcts_jax.tasks import registry


def parse_variants(text: str) -> dict[str, dict]:
  """`"a:branch=3,exploration=0.2;b:widen_visits=0"` -> {"a": {...}, ...};
  keys are `MCTSConfig` fields, values Python literals."""
  return oracle_value.parse_variants(
      text, set(mcts_star.MCTSConfig.__dataclass_fields__),
      section="MCTSConfig")


def _batches(problems, config, tokenizer, base_key):
  """`(problems, questions [B, W], lengths [B], keys [B])` per
  `config.search_batch` problems, keyed as `collect` keys them."""
  for lo in range(0, len(problems), config.search_batch):
    chunk = problems[lo:lo + config.search_batch]
    questions, qlen = evaluation.encode_rows(
        tokenizer, [p.question for p in chunk], config.question_width)
    yield chunk, questions, qlen, evaluation.problem_keys(
        base_key, range(lo, lo + len(chunk)))


def search_yield(models, problems, search_config, *, config, tokenizer, task,
                 sampler_config, base_key) -> dict[str, float]:
  """MCTS* over `problems` as `collect` runs it: solved share, traces, D_V
  records, policy tokens per question."""
  graphdef, state = nnx.split(models)
  solved = tokens = traces = records = 0
  for chunk, questions, qlen, keys in _batches(problems, config, tokenizer,
                                               base_key):
    result, correct, found_records, found = selftrain.search_labelled(
        graphdef, state, chunk, questions, qlen, keys, task=task,
        decode=tokenizer.decode, sampler_config=sampler_config,
        search_config=search_config, config=config, cache_nodes=False)
    solved += int(correct.any(axis=1).sum())
    tokens += int(np.sum(result.policy_tokens))
    traces += len(found.lengths)
    records += len(found_records.target)
  n = len(problems)
  return dict(solved=solved / n, traces=traces, records=records,
              tokens=tokens / n)


def sampling_yield(models, problems, *, config, tokenizer, task,
                   sampler_config, base_key) -> dict[str, float]:
  """ReST-EM's `rest_em.num_samples` samples per question, as `collect`."""
  graphdef, state = nnx.split(models)
  solved = tokens = traces = 0
  for chunk, questions, qlen, keys in _batches(problems, config, tokenizer,
                                               base_key):
    found, hits, used = selftrain.sample_correct(
        graphdef, state, chunk, questions, qlen, keys, task=task,
        tokenizer=tokenizer, sampler_config=sampler_config,
        num_samples=config.rest_em.num_samples, max_depth=config.max_depth,
        traces_per_question=config.train.traces_per_question)
    solved += hits
    tokens += used
    traces += len(found)
  n = len(problems)
  return dict(solved=solved / n, traces=traces, records=0, tokens=tokens / n)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="a game24 run of restmcts_jax.main")
  parser.add_argument("--iteration", type=int, default=1,
                      help="whose training questions and keys to use")
  parser.add_argument("--variants", default="",
                      help="name:key=value,...;... over config.search")
  parser.add_argument("--values", default="learned",
                      help="learned, exact or both (comma-separated)")
  args = parser.parse_args()
  value_names = [v for v in args.values.split(",") if v]
  if not value_names or not set(value_names) <= {"learned", "exact"}:
    raise ValueError(f"--values={args.values}: choose from learned,exact")
  variants = {"config.search": {}, **parse_variants(args.variants)}

  config, tokenizer, (policy, learned), _ = experiment.restore(args.workdir)
  if config.task != "game24":
    raise ValueError(f"{args.workdir}: task {config.task!r}, not game24 "
                     "(the exact value reads Game of 24 positions)")
  task = registry.get_task(config.task)
  problems = selftrain.iteration_problems(
      config, experiment.load_data(config, warm_start=False).train,
      args.iteration)
  common = dict(config=config, tokenizer=tokenizer, task=task,
                sampler_config=experiment.sampler_config_for(config,
                                                             tokenizer),
                base_key=jax.random.fold_in(jax.random.key(config.seed),
                                            args.iteration))
  values = {"learned": learned,
            "exact": oracle_value.ExactValue(tokenizer, config.max_depth)}

  rows = {}
  start = time.time()
  rows[("ReST-EM samples", "-")] = sampling_yield((policy, learned), problems,
                                                  **common)
  print(f"sampled in {time.time() - start:.0f} s", flush=True)
  for name, settings in variants.items():
    search_config = experiment.search_config_for(config, **settings)
    for value_name in value_names:
      start = time.time()
      rows[(name, value_name)] = search_yield(
          (policy, values[value_name]), problems, search_config, **common)
      print(f"{name} ({value_name}) searched in {time.time() - start:.0f} s",
            flush=True)

  sampled = rows[("ReST-EM samples", "-")]["solved"]
  print(f"\n{len(problems)} training questions of iteration "
        f"{args.iteration}, {args.workdir}; ReST-EM: "
        f"{config.rest_em.num_samples} samples per question")
  header = (f"{'collector':16s} | {'value':7s} | solved | vs samples | "
            "traces | D_V records | tokens/q")
  print(header + "\n" + "-" * len(header))
  for (name, value_name), r in rows.items():
    print(f"{name:16s} | {value_name:7s} | {r['solved']:6.3f} | "
          f"{r['solved'] / max(sampled, 1e-9):9.2f}x | {r['traces']:6d} | "
          f"{r['records']:11d} | {r['tokens']:8.0f}")
  for name, settings in variants.items():
    if settings:
      print(f"{name}: {settings}")
  if "learned" in value_names:
    gap = rows[("config.search", "learned")]["solved"] - sampled
    print(f"RESULT search_minus_sampling_solved {gap:.3f}")


if __name__ == "__main__":
  main()
