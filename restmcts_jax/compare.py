r"""Compares self-training runs over seeds: each metric's mean and standard
error per iteration, per group of workdirs, and the paired difference of two
groups run with the same seeds.

    python -m restmcts_jax.compare \
        --runs=rest_mcts:runs/game24,runs/game24_s1,runs/game24_s2 \
        --runs=rest_em:runs/em,runs/em_s1,runs/em_s2 --out=runs/compare

On 100 test puzzles one run's accuracy moves by a few points from seed to
seed, the size of one iteration's gain: claims such as "greedy accuracy rises
every iteration" or "ReST-MCTS* ends above ReST-EM" are read here from the
mean over seeds, with its standard error. Prints three tables (per
iteration; accuracy vs budget after the last iteration; each group's last
iteration against the first group's, paired by `config.seed`) and writes
`summary.json`, `accuracy_per_iteration.png` and `accuracy_vs_budget.png`
to `--out`.
"""

import dataclasses
import json
import math
import sys
from collections.abc import Sequence

from absl import app
from absl import flags
from etils import epath

from restmcts_jax import paths
from restmcts_jax import plots
from restmcts_jax import tables

_RUNS = flags.DEFINE_multi_string(
    "runs", None, "A group of workdirs: `name:dir,dir,...` (one per seed); "
    "repeat the flag for each group. The first group is the baseline of the "
    "paired differences.")
_OUT = flags.DEFINE_string(
    "out", None, "Folder for summary.json and the plots (default: none "
    "written).")
_METRICS = flags.DEFINE_string(
    "metrics", "accuracy_greedy,sample_accuracy,accuracy_sc,accuracy_bon,"
    "accuracy_tot,accuracy_mcts,search_solved,traces",
    "metrics.jsonl keys to summarize, comma-separated.")


@dataclasses.dataclass(frozen=True)
class Run:
  """One workdir's results: `metrics` (one row per iteration, 0 = warm
  start) and `evaluations` (one row per iteration, method and budget)."""
  workdir: str
  seed: int | None
  metrics: list[dict]
  evaluations: list[dict]

  @property
  def last_iteration(self) -> int:
    return self.metrics[-1]["iteration"]


def _read_jsonl(path: epath.Path) -> list[dict]:
  if not path.exists():
    raise FileNotFoundError(
        f"no {path.name} at {path}: not the workdir of a run of "
        "`python -m restmcts_jax.main`, or one that has not evaluated yet")
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not JSON ({e})") from e
    if not isinstance(row, dict) or "iteration" not in row:
      raise ValueError(f"{path}:{number}: expected a JSON object with "
                       "'iteration'")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no rows")
  return rows


def load_run(workdir) -> Run:
  """Reads `metrics.jsonl`, `eval.jsonl` and the seed in `config.json`;
  errors name the file (and line) that is missing or malformed."""
  workdir = epath.Path(workdir)
  config = workdir / "config.json"
  seed = None
  if config.exists():
    seed = json.loads(config.read_text()).get("seed")
  return Run(str(workdir), seed, _read_jsonl(workdir / "metrics.jsonl"),
             _read_jsonl(workdir / "eval.jsonl"))


def parse_groups(specs: Sequence[str]) -> dict[str, list[str]]:
  """`["name:a,b", ...]` -> `{name: [a, b]}`, in order."""
  groups = {}
  for spec in specs:
    name, sep, dirs = spec.partition(":")
    workdirs = [d for d in dirs.split(",") if d]
    if not sep or not name or not workdirs:
      raise ValueError(f"--runs={spec!r}: expected name:dir,dir,...")
    if name in groups:
      raise ValueError(f"--runs: group {name!r} given twice")
    groups[name] = workdirs
  return groups


def mean_and_error(values: Sequence[float]) -> tuple[float, float]:
  """Mean and standard error of the mean (sample standard deviation over
  sqrt(n); NaN for a single value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, math.nan
  variance = sum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(variance / n)


def _cell(key: str, values: Sequence[float]) -> dict:
  mean, error = mean_and_error(values)
  return dict(key=key, mean=mean, error=error, n=len(values))


def per_iteration(groups: dict[str, list[Run]],
                  keys: Sequence[str]) -> list[dict]:
  """Rows `{group, iteration, key, mean, error, n}` over the runs of each
  group that have the key at that iteration."""
  rows = []
  for name, runs in groups.items():
    iterations = sorted({m["iteration"] for r in runs for m in r.metrics})
    for iteration in iterations:
      for key in keys:
        values = [m[key] for r in runs for m in r.metrics
                  if m["iteration"] == iteration and key in m]
        if values:
          rows.append(dict(group=name, iteration=iteration,
                           **_cell(key, values)))
  return rows


def budget_curves(groups: dict[str, list[Run]]) -> list[dict]:
  """Rows `{group, method, samples, key="accuracy", mean, error, n,
  policy_tokens}` from each run's last iteration's evaluations."""
  rows = []
  for name, runs in groups.items():
    cells = {}
    for run in runs:
      for e in run.evaluations:
        if e["iteration"] == run.last_iteration:
          cells.setdefault((e["method"], e["samples"]), []).append(e)
    for (method, samples), evals in cells.items():
      rows.append(dict(
          group=name, method=method, samples=samples,
          policy_tokens=sum(e["policy_tokens"] for e in evals) / len(evals),
          **_cell("accuracy", [e["accuracy"] for e in evals])))
  return rows


def paired_differences(groups: dict[str, list[Run]],
                       keys: Sequence[str]) -> list[dict]:
  """Each later group's last-iteration metrics minus the first group's,
  over the seeds both ran: rows `{group, baseline, key, mean, error, n}`
  (the mean and standard error of the per-seed differences)."""
  (baseline, base_runs), *others = groups.items()
  base = {r.seed: r.metrics[-1] for r in base_runs}
  rows = []
  for name, runs in others:
    pairs = [(r.metrics[-1], base[r.seed]) for r in runs if r.seed in base]
    for key in keys:
      differences = [m[key] - b[key] for m, b in pairs if key in m and key in b]
      if differences:
        rows.append(dict(group=name, baseline=baseline,
                         **_cell(key, differences)))
  return rows


def rises_every_iteration(runs: Sequence[Run], key: str) -> dict:
  """How many runs' `key` rises at every iteration, and whether the mean
  over runs does (iterations every run reached)."""
  series = [[m[key] for m in r.metrics if key in m] for r in runs]
  rising = lambda s: len(s) > 1 and all(a < b for a, b in zip(s, s[1:]))
  length = min(len(s) for s in series)
  means = [sum(s[i] for s in series) / len(series) for i in range(length)]
  return dict(key=key, runs_rising=sum(map(rising, series)), runs=len(runs),
              mean_rising=rising(means))


def _format(cell: dict, scale: float = 1.0) -> str:
  if math.isnan(cell["error"]):
    return f"{cell['mean'] * scale:.3g}"
  return f"{cell['mean'] * scale:.3g} ± {cell['error'] * scale:.2g}"


def report(iterations: list[dict], curves: list[dict],
           differences: list[dict], rises: list[dict],
           keys: Sequence[str]) -> str:
  """The three tables and the rising counts as text."""
  cells = {(r["group"], r["iteration"], r["key"]): r for r in iterations}
  lines = list(dict.fromkeys((r["group"], r["iteration"]) for r in iterations))
  shown = [k for k in keys if any(r["key"] == k for r in iterations)]
  n = {(g, i): max(r["n"] for r in iterations
                   if (r["group"], r["iteration"]) == (g, i))
       for g, i in lines}
  text = ["Per iteration (mean ± standard error over runs):",
          tables.text_table(["group", "iter", "runs", *shown],
                 [[g, i, n[g, i], *(_format(cells[g, i, k])
                                    if (g, i, k) in cells else "-"
                                    for k in shown)]
                  for g, i in lines])]
  if curves:
    text += ["", "After the last iteration, accuracy vs budget:",
             tables.text_table(["group", "method", "samples", "runs", "policy tokens",
                     "accuracy"],
                    [[r["group"], r["method"], r["samples"], r["n"],
                      f"{r['policy_tokens']:.0f}", _format(r)]
                     for r in curves])]
  if differences:
    text += ["", "Last iteration minus the baseline group's, paired by seed:",
             tables.text_table(["group", "baseline", "key", "seeds", "difference"],
                    [[r["group"], r["baseline"], r["key"], r["n"],
                      _format(r)] for r in differences])]
  text += [""] + [
      f"{r['group']}: {r['key']} rises at every iteration in "
      f"{r['runs_rising']} of {r['runs']} runs; the mean "
      f"{'does' if r['mean_rising'] else 'does not'}" for r in rises]
  return "\n".join(text)


def compare(groups: dict[str, list[str]], keys: Sequence[str],
            out=None) -> dict:
  """Loads every run, prints the report, and writes `summary.json` and the
  plots to `out` if given. Returns the summary."""
  runs = {name: [load_run(w) for w in workdirs]
          for name, workdirs in groups.items()}
  summary = dict(
      per_iteration=per_iteration(runs, keys),
      budget_curves=budget_curves(runs),
      paired_differences=paired_differences(runs, keys),
      rises=[dict(group=name, **rises_every_iteration(rs, key))
             for name, rs in runs.items()
             for key in ("accuracy_greedy", "sample_accuracy")
             if all(any(key in m for m in r.metrics) for r in rs)])
  print(report(summary["per_iteration"], summary["budget_curves"],
               summary["paired_differences"], summary["rises"], keys))
  if out is not None:
    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Strict JSON: a single run's NaN error is written as null.
    strict = {part: [{k: None if isinstance(v, float) and math.isnan(v) else v
                      for k, v in row.items()} for row in rows]
              for part, rows in summary.items()}
    paths.write_atomic(out / "summary.json", json.dumps(strict, indent=1))
    plots.accuracy_per_iteration_over_runs(
        summary["per_iteration"], out / "accuracy_per_iteration.png")
    if summary["budget_curves"]:
      plots.accuracy_vs_budget_over_runs(
          summary["budget_curves"], out / "accuracy_vs_budget.png")
  return summary


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _RUNS.value:
    raise app.UsageError("give at least one --runs=name:dir,dir,...")
  try:
    groups = parse_groups(_RUNS.value)
    keys = [k for k in _METRICS.value.split(",") if k]
    compare(groups, keys, _OUT.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
