"""`restmcts_jax.compare`: runs over seeds summarized by hand-checked means,
standard errors and paired differences; bad workdirs named."""

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from scipy import stats

from configs import game24
from restmcts_jax import compare
from restmcts_jax import experiment


def _write_run(workdir, seed, greedy, samples=None, budgets=None):
  """A workdir as `restmcts_jax.main` leaves it: greedy accuracy (and
  pass@1) per iteration; `budgets` {(method, samples): accuracy} evaluated
  after the last iteration."""
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"seed": seed}))
  metrics, evaluations = [], []
  for i, g in enumerate(greedy):
    row = dict(iteration=i, accuracy_greedy=g)
    if samples is not None:
      row["sample_accuracy"] = samples[i]
    if i:
      row["traces"] = 10 * i
    metrics.append(row)
    evaluations.append(dict(iteration=i, method="greedy", samples=1,
                            accuracy=g, policy_tokens=46.0))
  for (method, n), accuracy in (budgets or {}).items():
    evaluations.append(dict(iteration=len(greedy) - 1, method=method,
                            samples=n, accuracy=accuracy,
                            policy_tokens=47.0 * n + seed))
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps(m) + "\n" for m in metrics))
  (workdir / "eval.jsonl").write_text(
      "".join(json.dumps(e) + "\n" for e in evaluations))
  return str(workdir)


@pytest.fixture
def two_groups(tmp_path):
  a = [_write_run(tmp_path / "a0", 0, [0.01, 0.04, 0.05], [0.002, 0.01, 0.02],
                  {("bon", 4): 0.10, ("mcts", 4): 0.12}),
       _write_run(tmp_path / "a1", 1, [0.03, 0.02, 0.09], [0.004, 0.02, 0.03],
                  {("bon", 4): 0.14, ("mcts", 4): 0.10})]
  # Listed in the other seed order: pairs go by config.json's seed.
  b = [_write_run(tmp_path / "b1", 1, [0.03, 0.05, 0.06], [0.004, 0.01, 0.01],
                  {("bon", 4): 0.13}),
       _write_run(tmp_path / "b0", 0, [0.01, 0.03, 0.04], [0.002, 0.01, 0.03],
                  {("bon", 4): 0.11})]
  return {"mcts": a, "em": b}


def _cell(rows, **where):
  (row,) = [r for r in rows if all(r[k] == v for k, v in where.items())]
  return row


def test_means_errors_and_paired_differences_by_hand(two_groups, tmp_path):
  summary = compare.summarize(compare.load_groups(two_groups),
                              ["accuracy_greedy", "traces"])
  compare.write(summary, tmp_path / "out")
  cell = _cell(summary["per_iteration"], group="mcts", iteration=2,
               key="accuracy_greedy")
  # 0.05 and 0.09: mean 0.07, sample sd 0.02 * sqrt(2), over sqrt(2).
  assert cell["mean"] == pytest.approx(0.07)
  assert cell["error"] == pytest.approx(0.02)
  assert cell["n"] == 2
  assert _cell(summary["per_iteration"], group="em", iteration=1,
               key="traces")["mean"] == 10
  # Iteration 0 has no traces: no cell rather than a zero.
  assert not [r for r in summary["per_iteration"]
              if r["iteration"] == 0 and r["key"] == "traces"]
  # em - mcts after the last iteration: seed 0: 0.04 - 0.05, seed 1: 0.06 -
  # 0.09; mean -0.02, the differences' sample sd 0.01 * sqrt(2), over
  # sqrt(2).
  diff = _cell(summary["paired_differences"], group="em", iteration=2,
               key="accuracy_greedy")
  assert diff["baseline"] == "mcts"
  assert diff["mean"] == pytest.approx(-0.02)
  assert diff["error"] == pytest.approx(0.01)
  # And at every earlier iteration: after iteration 1, 0.03 - 0.04 and
  # 0.05 - 0.02 (mean 0.01, error 0.02); traces from iteration 1 on.
  diff = _cell(summary["paired_differences"], iteration=1,
               key="accuracy_greedy")
  assert (diff["mean"], diff["error"]) == (pytest.approx(0.01),
                                           pytest.approx(0.02))
  assert [(r["iteration"], r["key"]) for r in summary["paired_differences"]
          ] == [(0, "accuracy_greedy"), (1, "accuracy_greedy"), (1, "traces"),
                (2, "accuracy_greedy"), (2, "traces")]
  curve = _cell(summary["budget_curves"], group="mcts", method="bon")
  assert curve["mean"] == pytest.approx(0.12)
  assert curve["error"] == pytest.approx(0.02)
  assert curve["policy_tokens"] == pytest.approx(188.5)  # 188 and 189
  # MCTS* - Best-of-N at 4 samples, run by run: 0.12 - 0.10, 0.10 - 0.14;
  # mean -0.01, sample sd 0.03 * sqrt(2), over sqrt(2). Only where both ran.
  (versus,) = [r for r in summary["method_differences"] if r["iteration"] == 2]
  assert (versus["group"], versus["other"], versus["samples"]) == (
      "mcts", "bon", 4)
  assert versus["mean"] == pytest.approx(-0.01)
  assert versus["error"] == pytest.approx(0.03)
  # Best-of-N at 4 samples, em - mcts by seed: 0.11 - 0.10, 0.13 - 0.14;
  # greedy (1 sample) as in the metrics; MCTS* only in one group: no row.
  greedy, bon = [r for r in summary["paired_budget_differences"]
                 if r["iteration"] == 2]
  assert (bon["method"], bon["samples"], bon["n"]) == ("bon", 4, 2)
  assert bon["mean"] == pytest.approx(0.0)
  assert bon["error"] == pytest.approx(0.01)
  assert (greedy["method"], greedy["mean"]) == ("greedy",
                                                pytest.approx(-0.02))
  # Earlier iterations evaluated greedy only: paired, no method differences.
  assert {r["iteration"] for r in summary["method_differences"]} == {2}
  assert [(r["iteration"], r["method"]) for r in summary[
      "paired_budget_differences"]] == [(0, "greedy"), (1, "greedy"),
                                        (2, "greedy"), (2, "bon")]
  written = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert written["paired_differences"][-2]["mean"] == pytest.approx(-0.02)
  for name in ("accuracy_per_iteration.png", "accuracy_vs_budget.png"):
    assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"


def test_rising_counts_runs_and_the_mean(two_groups):
  runs = [compare.load_run(w) for w in two_groups["mcts"]]
  # Greedy: a0 rises 1 -> 4 -> 5, a1 falls 3 -> 2; the mean 2 -> 3 -> 7 rises.
  assert compare.rises_every_iteration(runs, "accuracy_greedy") == dict(
      key="accuracy_greedy", iterations=[0, 1, 2], runs_rising=1, runs=2,
      mean_rising=True)
  em = [compare.load_run(w) for w in two_groups["em"]]
  # b1: 3 -> 5 -> 6, b0: 1 -> 3 -> 4: both rise; pass@1 of b1 is flat.
  rise = compare.rises_every_iteration(em, "accuracy_greedy")
  assert rise["runs_rising"] == 2
  assert compare.rises_every_iteration(em, "sample_accuracy") == dict(
      key="sample_accuracy", iterations=[0, 1, 2], runs_rising=1, runs=2,
      mean_rising=True)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=12))
def test_mean_and_error_match_scipy(values):
  mean, error = compare.mean_and_error(values)
  assert mean == pytest.approx(np.mean(values), abs=1e-12)
  assert error == pytest.approx(stats.sem(values), abs=1e-12)


def test_a_single_run_has_no_error(tmp_path):
  mean, error = compare.mean_and_error([0.25])
  assert mean == 0.25 and math.isnan(error)
  run = _write_run(tmp_path / "a", 0, [0.01, 0.02], budgets={("bon", 2): 0.1})
  compare.write(compare.summarize(compare.load_groups({"one": [run]}),
                                  ["accuracy_greedy"]), tmp_path / "out")
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert summary["per_iteration"][1] == dict(
      group="one", iteration=1, key="accuracy_greedy", mean=0.02, error=None,
      n=1)


def test_the_command_prints_tables_and_names_bad_input(two_groups, tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "restmcts_jax.compare", *args],
                          capture_output=True, text=True, check=False)
  ok = run("--runs=mcts:" + ",".join(two_groups["mcts"]),
           "--runs=em:" + ",".join(two_groups["em"]),
           "--metrics=accuracy_greedy")
  assert ok.returncode == 0, ok.stderr
  assert "7.0 ± 2.0" in ok.stdout  # mcts, iteration 2, in %
  # em - mcts, paired, after iterations 1 and 2.
  for line in (r"em − mcts \| +1 \| +2 \| +1\.0 ± 2\.0",
               r"em − mcts \| +2 \| +2 \| +-2\.0 ± 1\.0"):
    assert re.search(rf"^ *{line}$", ok.stdout, re.M), line
  # Best-of-N, em - mcts: 0.11 - 0.10 and 0.13 - 0.14, a mean a hair below
  # zero in floating point, shown as zero.
  assert re.search(r"^ *em \| +mcts \| +2 \| +4 \| +bon \| +2 \| +0\.0 ± "
                   r"1\.0$", ok.stdout, re.M)
  assert "-0.0" not in ok.stdout
  assert ("mcts: accuracy_greedy rises at every step of iterations 0-2 in 1 "
          "of 2 runs; their mean does") in ok.stdout

  bad = tmp_path / "bad"
  _write_run(bad, 0, [0.01, 0.02])
  with open(bad / "metrics.jsonl", "a") as f:
    f.write("{not json\n")
  result = run(f"--runs=x:{bad}")
  assert result.returncode != 0
  assert f"{bad / 'metrics.jsonl'}:3" in result.stderr
  result = run(f"--runs=x:{tmp_path / 'missing'}")
  assert "no metrics.jsonl at" in result.stderr
  result = run(f"--runs={bad}")
  assert "expected name:dir,dir" in result.stderr


def test_runs_of_different_lengths_meet_at_the_last_common_iteration(
    tmp_path):
  # a1 stopped after iteration 1: the group is compared there.
  groups = compare.load_groups({
      "a": [_write_run(tmp_path / "a0", 0, [0.01, 0.04, 0.05],
                       budgets={("bon", 4): 0.2}),
            _write_run(tmp_path / "a1", 1, [0.03, 0.02],
                       budgets={("bon", 4): 0.1})],
      "b": [_write_run(tmp_path / "b0", 0, [0.01, 0.06, 0.09]),
            _write_run(tmp_path / "b1", 1, [0.03, 0.05, 0.01])]})
  summary = compare.summarize(groups, ["accuracy_greedy"])
  # The budget table reads iteration 1: a0's budget rows are iteration 2's.
  (bon,) = [r for r in summary["budget_curves"] if r["method"] == "bon"]
  assert (bon["iteration"], bon["n"], bon["mean"]) == (1, 1, 0.1)
  greedy = _cell(summary["budget_curves"], group="a", method="greedy")
  assert greedy["mean"] == pytest.approx(0.03)  # 0.04 and 0.02
  # b - a at iteration 1: 0.06 - 0.04 and 0.05 - 0.02.
  # Pairs stop there: no iteration 2.
  diff = _cell(summary["paired_differences"], iteration=1,
               key="accuracy_greedy")
  assert max(r["iteration"] for r in summary["paired_differences"]) == 1
  assert diff["mean"] == pytest.approx(0.025)
  assert diff["error"] == pytest.approx(0.005)
  # Per iteration, iteration 2 has a0 alone.
  cell = _cell(summary["per_iteration"], group="a", iteration=2)
  assert (cell["n"], cell["mean"]) == (1, 0.05)
  assert re.search(r"^ *a \| +2 \| +1 \| +5\.0$",
                   compare.report(summary, ["accuracy_greedy"]), re.M)
  # Rising over iterations 0-1 only: a0 rises, a1 falls.
  (rise,) = [r for r in summary["rises"] if r["group"] == "a"]
  assert (rise["iterations"], rise["runs_rising"]) == ([0, 1], 1)


def test_unmatched_seeds_are_reported_not_paired(tmp_path):
  groups = compare.load_groups({
      "a": [_write_run(tmp_path / "a0", 0, [0.01, 0.05]),
            _write_run(tmp_path / "a1", 1, [0.01, 0.07])],
      "b": [_write_run(tmp_path / "b1", 1, [0.01, 0.04]),
            _write_run(tmp_path / "b2", 2, [0.01, 0.09])]})
  summary = compare.summarize(groups, ["accuracy_greedy"])
  diff = _cell(summary["paired_differences"], iteration=1,
               key="accuracy_greedy")
  assert (diff["n"], diff["mean"]) == (1, pytest.approx(-0.03))
  assert diff["unpaired"] == [str(tmp_path / "a0"), str(tmp_path / "b2")]
  assert str(tmp_path / "b2") in compare.report(summary, ["accuracy_greedy"])


def test_a_group_without_a_metric_still_plots(tmp_path):
  a = _write_run(tmp_path / "a", 0, [0.01, 0.05], [0.01, 0.02])
  b = _write_run(tmp_path / "b", 0, [0.01, 0.04])  # no sample_accuracy
  summary = compare.summarize(compare.load_groups({"a": [a], "b": [b]}),
                              ["sample_accuracy", "traces"])
  compare.write(summary, tmp_path / "out")
  assert (tmp_path / "out" / "accuracy_per_iteration.png").exists()
  # Without an accuracy key there is nothing to plot per iteration.
  summary = compare.summarize(compare.load_groups({"c": [
      _write_run(tmp_path / "c", 0, [0.01, 0.04])]}), ["traces"])
  compare.write(summary, tmp_path / "out2")
  assert not (tmp_path / "out2" / "accuracy_per_iteration.png").exists()


@pytest.mark.parametrize("problem, message", [
    ("repeated seed", "both ran seed 0: one run per seed"),
    ("repeated workdir", "is listed twice"),
    ("bad config", "config.json: not a JSON object"),
    ("eval row", "eval.jsonl:1: expected a JSON object with 'policy_tokens'"),
    ("no metrics", "metrics.jsonl: no rows"),
])
def test_bad_groups_name_the_file_or_run(tmp_path, problem, message):
  a = _write_run(tmp_path / "a", 0, [0.01, 0.05])
  b = _write_run(tmp_path / "b", 0 if problem == "repeated seed" else 1,
                 [0.01, 0.05])
  groups = {"x": [a, b]}
  if problem == "repeated workdir":
    groups = {"x": [a], "y": [a]}
  elif problem == "bad config":
    (tmp_path / "b" / "config.json").write_text("[1, 2")
  elif problem == "eval row":
    (tmp_path / "b" / "eval.jsonl").write_text(
        '{"iteration": 0, "method": "greedy", "samples": 1, "accuracy": 0}\n')
  elif problem == "no metrics":
    (tmp_path / "b" / "metrics.jsonl").write_text("\n")
  with pytest.raises(ValueError, match=message):
    compare.load_groups(groups)


@pytest.mark.parametrize("folder, mode", [("game24", "rest_mcts"),
                                          ("game24_rest_em", "rest_em")])
def test_the_recorded_default_runs_load_and_ran_the_default(folder, mode):
  """docs/runs keeps six seeds of the default run's results in each mode (no
  checkpoints) for `compare` to pair new runs with: each loads, and each ran
  `configs/game24.py` in its mode but for its seed and the keys a run may
  change."""
  root = pathlib.Path(__file__).resolve().parent.parent / "docs/runs" / folder
  workdirs = sorted(str(d) for d in root.glob("seed*"))
  runs = compare.load_groups({mode: workdirs})[mode]
  assert sorted(run.seed for run in runs) == list(range(6))
  assert {run.last_iteration for run in runs} == {3}
  default = json.loads(game24.get_config().to_json())
  default["mode"] = mode
  for workdir in workdirs:
    saved = json.loads(pathlib.Path(workdir, "config.json").read_text())
    for key in sorted(set(default) | set(saved)):
      if key != "seed" and key not in experiment.RESUMABLE_KEYS:
        assert saved.get(key) == default.get(key), (workdir, key)
