"""bench/policy_sft.py: its variants parse, and its `config.train` row is
what the loop's own `train` and `eval` phases then measure, to the digit."""

import importlib.util
import json
import math
import pathlib
import shutil

import pytest

from restmcts_jax import experiment
from restmcts_jax import selftrain
from tests import sums_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_policy_sft", ROOT / "bench" / "policy_sft.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_variants_parse_into_sft_settings():
  assert bench.parse_variants(
      "long:policy_steps=300,learning_rate=1e-4; noreplay: replay=0") == {
          "long": dict(policy_steps=300, learning_rate=1e-4),
          "noreplay": dict(replay=0)}
  with pytest.raises(ValueError, match="'value_steps=3': expected key=value "
                     "with a key of config.train"):
    bench.parse_variants("a:value_steps=3")
  with pytest.raises(ValueError, match="expected name:key=value"):
    bench.parse_variants("replay=0")


def test_a_random_subset_keeps_order_and_is_seeded():
  items = list(range(10))
  subset = bench.random_subset(items, 4, seed=3)
  assert len(set(subset)) == 4 and subset == sorted(subset)
  assert subset == bench.random_subset(items, 4, seed=3)
  assert {tuple(bench.random_subset(items, 4, seed=s)) for s in range(5)} != {
      tuple(subset)}
  assert bench.random_subset(items, 0, seed=3) == items
  assert bench.random_subset(items, 10, seed=3) == items


def _sums_config(data, iterations):
  # A task the tiny model learns in its warm start, so there are traces.
  config = sums_task.config(data)
  config.eval.methods = "greedy,sc"  # what the bench measures
  config.iterations = iterations
  config.sampler.temperature = 1.0  # samples that depend on their keys
  return config


@pytest.mark.slow
def test_default_row_is_the_loops_next_iteration(tmp_path):
  data = sums_task.write_data(tmp_path / "sums.jsonl")
  workdir = tmp_path / "iteration0"
  selftrain.run(_sums_config(data, 0), workdir)
  config = experiment.load_config(workdir)
  found, scores = bench.measure(
      workdir, 1, {"config.train": {}, "frozen": dict(learning_rate=0.0)},
      samples=config.eval.budget, split="test", log=lambda _: None)

  copy = tmp_path / "iteration1"
  shutil.copytree(workdir, copy)
  row = selftrain.run(_sums_config(data, 1), copy)[-1]
  assert found["traces"] == row["traces"] > 0
  assert found["search_solved"] == row["search_solved"]
  ours = scores["config.train"]
  assert ours["loss"] == row["policy_loss"]
  assert (ours["greedy"], ours["sc"], ours["pass1"]) == (
      row["accuracy_greedy"], row["accuracy_sc"], row["sample_accuracy_sc"])
  assert math.isnan(scores[bench.BASELINE]["loss"])
  # A variant's settings apply, to a copy of the checkpoint's parameters:
  # at learning rate 0 the policy answers as the checkpoint's does.
  frozen, before = scores["frozen"], scores[bench.BASELINE]
  assert frozen["loss"] > 0
  assert [frozen[k] for k in ("greedy", "pass1", "pass_n", "sc")] == [
      before[k] for k in ("greedy", "pass1", "pass_n", "sc")]
  # The bench leaves the workdir as it was: no tree pages, config unchanged.
  assert not (workdir / "trees" / "iteration_1").exists()
  assert json.loads((workdir / experiment.CONFIG_FILE).read_text())[
      "eval"]["split"] == "test"
