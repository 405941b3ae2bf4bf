"""bench/training_search.py: its variants parse, and what it measures is
what the loop's `collect` phase then finds, to the digit."""

import importlib.util
import json
import pathlib
import shutil

import jax
import pytest

from configs import tiny
from restmcts_jax import experiment
from restmcts_jax import selftrain
from restmcts_jax.tasks import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_training_search", ROOT / "bench" / "training_search.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_variants_parse_into_search_settings():
  variants = bench.parse_variants(
      "reference:num_iterations=30,token_budget=0,stop_at_end_gate=false;"
      " wide: branch=3")
  assert variants == {
      "reference": dict(num_iterations=30, token_budget=0,
                        stop_at_end_gate=False),
      "wide": dict(branch=3)}
  with pytest.raises(ValueError, match="'depth=3': expected key=value with a "
                     "key of MCTSConfig"):
    bench.parse_variants("a:depth=3")
  with pytest.raises(ValueError, match="expected name:key=value"):
    bench.parse_variants("branch=3")


def _tiny_config(**overrides):
  config = tiny.get_config()
  config.eval.methods = "greedy"  # evaluation is not what is measured here
  config.update(overrides)
  return config


def _iteration_one(workdir, mode):
  """The metrics of iteration 1 run by the loop from `workdir`'s iteration-0
  state (a copy), in `mode`."""
  copy = workdir.parent / mode
  shutil.copytree(workdir, copy)
  path = copy / experiment.CONFIG_FILE
  written = json.loads(path.read_text())
  path.write_text(json.dumps(dict(written, mode=mode)))
  return selftrain.run(_tiny_config(mode=mode, iterations=1), copy)[-1]


def test_yields_match_what_the_loop_collects(tmp_path):
  workdir = tmp_path / "iteration0"
  selftrain.run(_tiny_config(iterations=0), workdir)
  config, tokenizer, (policy, value), _ = experiment.restore(workdir)
  problems = selftrain.iteration_problems(
      config, experiment.load_data(config, warm_start=False).train, 1)
  common = dict(config=config, tokenizer=tokenizer,
                task=registry.get_task(config.task),
                sampler_config=experiment.sampler_config_for(config,
                                                             tokenizer),
                base_key=jax.random.fold_in(jax.random.key(config.seed), 1))
  searched = bench.search_yield((policy, value), problems,
                                experiment.search_config_for(config),
                                **common)
  sampled = bench.sampling_yield((policy, value), problems, **common)

  rest_mcts = _iteration_one(workdir, "rest_mcts")
  assert searched == dict(solved=rest_mcts["search_solved"],
                          traces=rest_mcts["traces"],
                          records=rest_mcts["value_records"],
                          tokens=rest_mcts["search_policy_tokens"])
  assert searched["tokens"] > 0
  rest_em = _iteration_one(workdir, "rest_em")
  assert (sampled["solved"], sampled["traces"], sampled["tokens"]) == (
      rest_em["search_solved"], rest_em["traces"],
      rest_em["search_policy_tokens"])
