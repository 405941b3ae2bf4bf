r"""Compares self-training runs over seeds: each metric's mean and standard
error per iteration, per group of workdirs, and the paired difference of two
groups run with the same seeds at every iteration.

    python -m restmcts_jax.compare \
        --runs=rest_mcts:runs/game24,runs/game24_s1,runs/game24_s2 \
        --runs=rest_em:runs/em,runs/em_s1,runs/em_s2 --out=runs/compare

On 100 test puzzles one run's accuracy moves by a few points from seed to
seed, the size of one iteration's gain: claims such as "greedy accuracy rises
every iteration" or "ReST-MCTS* ends above ReST-EM" are read here from the
mean over seeds, with its standard error. Prints five tables (per
iteration; accuracy vs budget at the last iteration every run of a group
reached; at each iteration, MCTS* minus each other method at the same
budget, paired by run, and each group against the first group, paired by
`config.seed`, per metric and per method and budget)
and which runs' accuracies rise at every iteration, and writes
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
from restmcts_jax.tasks import jsonl

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

_EVAL_FIELDS = ("iteration", "method", "samples", "accuracy", "policy_tokens")


@dataclasses.dataclass(frozen=True)
class Run:
  """One workdir's results: `metrics` (one row per iteration, 0 = warm
  start), `evaluations` (one row per iteration, method and budget) and the
  config's seed."""
  workdir: str
  seed: int | None
  metrics: list[dict]
  evaluations: list[dict]

  @property
  def last_iteration(self) -> int:
    """The last iteration the run evaluated."""
    return self.metrics[-1]["iteration"]

  def at(self, iteration: int) -> dict:
    """The metrics row of `iteration` ({} if the run has none)."""
    return next((m for m in self.metrics if m["iteration"] == iteration), {})

  def accuracies(self, iteration: int) -> dict[tuple[str, int], float]:
    """`{(method, samples): accuracy}` evaluated after `iteration`."""
    return {(e["method"], e["samples"]): e["accuracy"]
            for e in self.evaluations if e["iteration"] == iteration}


def _read_jsonl(path: epath.Path, fields: Sequence[str]) -> list[dict]:
  """The JSON objects of `path`, each with `fields`; errors name the file
  and line."""
  if not path.exists():
    raise FileNotFoundError(
        f"no {path.name} at {path}: not the workdir of a run of "
        "`python -m restmcts_jax.main`, or one that has not evaluated yet")

  def with_fields(row: dict) -> dict:
    missing = [f for f in fields if f not in row]
    if missing:
      raise ValueError(f"expected a JSON object with "
                       f"{', '.join(map(repr, missing))}")
    return row

  return jsonl.read_jsonl(path, with_fields)


def load_run(workdir) -> Run:
  """Reads `metrics.jsonl`, `eval.jsonl` and the seed in `config.json`;
  errors name the file (and line) that is missing or malformed."""
  workdir = epath.Path(workdir)
  seed = None
  config = workdir / "config.json"
  if config.exists():
    try:
      seed = json.loads(config.read_text()).get("seed")
    except (json.JSONDecodeError, AttributeError) as e:
      raise ValueError(f"{config}: not a JSON object ({e})") from e
  metrics = _read_jsonl(workdir / "metrics.jsonl", ("iteration",))
  if not metrics:
    raise ValueError(f"{workdir / 'metrics.jsonl'}: no rows")
  return Run(str(workdir), seed, metrics,
             _read_jsonl(workdir / "eval.jsonl", _EVAL_FIELDS))


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


def load_groups(groups: dict[str, list[str]]) -> dict[str, list[Run]]:
  """Every group's runs. A workdir may appear once, and a group holds one
  run per seed (differences are paired by seed)."""
  seen, loaded = {}, {}
  for name, workdirs in groups.items():
    seeds = {}
    for workdir in workdirs:
      if workdir in seen:
        raise ValueError(f"{workdir} is listed twice (groups {seen[workdir]!r}"
                         f" and {name!r})")
      seen[workdir] = name
      run = load_run(workdir)
      if run.seed is not None and run.seed in seeds:
        raise ValueError(f"group {name!r}: {seeds[run.seed]} and {workdir} "
                         f"both ran seed {run.seed}: one run per seed")
      seeds[run.seed] = workdir
      loaded.setdefault(name, []).append(run)
  return loaded


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
  """`{key, mean, error, n}` of `values`."""
  mean, error = mean_and_error(values)
  return dict(key=key, mean=mean, error=error, n=len(values))


def final_iteration(runs: Sequence[Run]) -> int:
  """The last iteration every run reached: where runs are compared."""
  return min(r.last_iteration for r in runs)


def per_iteration(groups: dict[str, list[Run]],
                  keys: Sequence[str]) -> list[dict]:
  """Rows `{group, iteration, key, mean, error, n}` over the runs of each
  group that have the key at that iteration."""
  rows = []
  for name, runs in groups.items():
    iterations = sorted({m["iteration"] for r in runs for m in r.metrics})
    for iteration in iterations:
      for key in keys:
        values = [r.at(iteration)[key] for r in runs if key in r.at(iteration)]
        if values:
          rows.append(dict(group=name, iteration=iteration,
                           **_cell(key, values)))
  return rows


def budget_curves(groups: dict[str, list[Run]]) -> list[dict]:
  """Rows `{group, iteration, method, samples, key="accuracy", mean, error,
  n, policy_tokens}` at each group's `final_iteration`."""
  rows = []
  for name, runs in groups.items():
    iteration = final_iteration(runs)
    cells = {}
    for run in runs:
      for e in run.evaluations:
        if e["iteration"] == iteration:
          cells.setdefault((e["method"], e["samples"]), []).append(e)
    for (method, samples), evals in cells.items():
      rows.append(dict(
          group=name, iteration=iteration, method=method, samples=samples,
          policy_tokens=sum(e["policy_tokens"] for e in evals) / len(evals),
          **_cell("accuracy", [e["accuracy"] for e in evals])))
  return rows


def _shared_iterations(a: Sequence[Run], b: Sequence[Run]) -> list[int]:
  """The iterations up to the last one both groups reached (each group's
  `final_iteration`)."""
  return list(range(min(final_iteration(a), final_iteration(b)) + 1))


def _pairs_by_seed(runs: Sequence[Run],
                   base_runs: Sequence[Run]) -> list[tuple[Run, Run]]:
  """`(run, baseline run)` of every seed both groups ran, by seed."""
  base = {r.seed: r for r in base_runs if r.seed is not None}
  mine = {r.seed: r for r in runs if r.seed is not None}
  return [(mine[s], base[s]) for s in sorted(mine.keys() & base.keys())]


def paired_differences(groups: dict[str, list[Run]],
                       keys: Sequence[str]) -> list[dict]:
  """Each later group's metrics minus the first group's at every iteration
  both reached, over the seeds both ran: rows `{group, baseline, iteration,
  key, mean, error, n, unpaired}` (the mean and standard error of the
  per-seed differences; `unpaired`: workdirs of either group whose seed the
  other lacks)."""
  (baseline, base_runs), *others = groups.items()
  rows = []
  for name, runs in others:
    runs_paired = _pairs_by_seed(runs, base_runs)
    paired = {r.workdir for pair in runs_paired for r in pair}
    unpaired = sorted(r.workdir for r in [*runs, *base_runs]
                      if r.workdir not in paired)
    for iteration in _shared_iterations(base_runs, runs):
      pairs = [(m.at(iteration), b.at(iteration)) for m, b in runs_paired]
      for key in keys:
        differences = [m[key] - b[key] for m, b in pairs
                       if key in m and key in b]
        if differences:
          rows.append(dict(group=name, baseline=baseline, iteration=iteration,
                           unpaired=unpaired, **_cell(key, differences)))
  return rows


def _by_budget(cells) -> list[tuple[str, int]]:
  """`(method, samples)` cells ordered by budget, then method."""
  return sorted(cells, key=lambda c: (c[1], c[0]))


def paired_budget_differences(groups: dict[str, list[Run]]) -> list[dict]:
  """Each later group's accuracy at every (method, budget) minus the first
  group's, paired by seed, at every iteration both reached: rows `{group,
  baseline, iteration, method, samples, key="accuracy", mean, error, n}`."""
  (baseline, base_runs), *others = groups.items()
  rows = []
  for name, runs in others:
    runs_paired = _pairs_by_seed(runs, base_runs)
    for iteration in _shared_iterations(base_runs, runs):
      pairs = [(m.accuracies(iteration), b.accuracies(iteration))
               for m, b in runs_paired]
      for method, samples in _by_budget({c for m, _ in pairs for c in m}):
        differences = [m[method, samples] - b[method, samples]
                       for m, b in pairs
                       if (method, samples) in m and (method, samples) in b]
        if differences:
          rows.append(dict(group=name, baseline=baseline, iteration=iteration,
                           method=method, samples=samples,
                           **_cell("accuracy", differences)))
  return rows


def method_differences(groups: dict[str, list[Run]],
                       method: str = "mcts") -> list[dict]:
  """`method`'s accuracy minus each other method's at the same budget
  (`samples`), paired by run, at every iteration up to each group's
  `final_iteration`: rows `{group, iteration, method, other, samples,
  key="accuracy", mean, error, n}`. The paper's claim that MCTS* beats
  Self-Consistency and Best-of-N at equal tokens is read here."""
  rows = []
  for name, runs in groups.items():
    for iteration in range(final_iteration(runs) + 1):
      by_run = [run.accuracies(iteration) for run in runs]
      cells = {(m, n) for accuracies in by_run for m, n in accuracies
               if m != method}
      for other, samples in _by_budget(cells):
        differences = [a[method, samples] - a[other, samples] for a in by_run
                       if (method, samples) in a and (other, samples) in a]
        if differences:
          rows.append(dict(group=name, iteration=iteration, method=method,
                           other=other, samples=samples,
                           **_cell("accuracy", differences)))
  return rows


def rises_every_iteration(runs: Sequence[Run], key: str) -> dict:
  """Over the iterations up to `final_iteration` where every run has `key`:
  how many runs' `key` rises at every one of them, and whether the mean
  over runs does."""
  last = final_iteration(runs)
  iterations = [i for i in range(last + 1)
                if all(key in r.at(i) for r in runs)]
  series = [[r.at(i)[key] for i in iterations] for r in runs]
  rising = lambda s: len(s) > 1 and all(a < b for a, b in zip(s, s[1:]))
  means = [sum(column) / len(runs) for column in zip(*series)]
  return dict(key=key, iterations=iterations,
              runs_rising=sum(map(rising, series)), runs=len(runs),
              mean_rising=rising(means))


def _is_share(key: str) -> bool:
  return "accuracy" in key or "solved" in key


def _format(cell: dict, runs: int | None = None) -> str:
  """`mean ± error`, shares in percent; the count of runs when it is not
  the row's `runs`."""
  scale = 100 if _is_share(cell["key"]) else 1
  text = f"{round(cell['mean'] * scale, 1) + 0.0:.1f}"  # no "-0.0"
  if not math.isnan(cell["error"]):
    text += f" ± {cell['error'] * scale:.1f}"
  if runs is not None and cell["n"] != runs:
    text += f" ({cell['n']} runs)"
  return text


def _iteration_table(rows: list[dict], keys: Sequence[str],
                     count: str = "runs") -> str:
  """One line per (group, iteration), one column per key; `count` heads the
  column of runs (or pairs) per line."""
  cells = {(r["group"], r["iteration"], r["key"]): r for r in rows}
  lines = list(dict.fromkeys((r["group"], r["iteration"]) for r in rows))
  shown = [k for k in keys if any(r["key"] == k for r in rows)]
  runs = {line: max(r["n"] for r in rows
                    if (r["group"], r["iteration"]) == line)
          for line in lines}
  return tables.text_table(
      ["group", "iter", count, *shown],
      [[g, i, runs[g, i], *(_format(cells[g, i, k], runs[g, i])
                            if (g, i, k) in cells else "-" for k in shown)]
       for g, i in lines])


def _budget_table(rows: list[dict]) -> str:
  return tables.text_table(
      ["group", "iter", "method", "samples", "runs", "policy tokens",
       "accuracy %"],
      [[r["group"], r["iteration"], r["method"], r["samples"], r["n"],
        f"{r['policy_tokens']:.0f}", _format(r)] for r in rows])


def _difference_table(rows: list[dict], keys: Sequence[str]) -> str:
  return _iteration_table(
      [dict(r, group=f"{r['group']} − {r['baseline']}") for r in rows], keys,
      count="seeds")


def _method_difference_table(rows: list[dict]) -> str:
  return tables.text_table(
      ["group", "iter", "samples", "method", "minus", "runs", "difference"],
      [[r["group"], r["iteration"], r["samples"], r["method"], r["other"],
        r["n"], _format(r)] for r in rows])


def _budget_difference_table(rows: list[dict]) -> str:
  return tables.text_table(
      ["group", "baseline", "iter", "samples", "method", "seeds",
       "difference"],
      [[r["group"], r["baseline"], r["iteration"], r["samples"], r["method"],
        r["n"], _format(r)] for r in rows])


def report(summary: dict, keys: Sequence[str]) -> str:
  """The tables and the rising counts of `summary` as text."""
  text = ["Per iteration, mean ± standard error over runs (accuracies and "
          "shares solved in %):",
          _iteration_table(summary["per_iteration"], keys)]
  if summary["budget_curves"]:
    text += ["", "Accuracy vs budget at the last iteration every run "
             "reached:", _budget_table(summary["budget_curves"])]
  if summary["method_differences"]:
    text += ["", "One method minus another at the same budget, paired by run "
             "(points):", _method_difference_table(
                 summary["method_differences"])]
  if summary["paired_differences"]:
    text += ["", "Minus the baseline group, paired by seed (points for "
             "shares):", _difference_table(summary["paired_differences"],
                                           keys)]
    if summary["paired_budget_differences"]:
      text += ["", "Accuracy at each budget minus the baseline group's, "
               "paired by seed (points):", _budget_difference_table(
                   summary["paired_budget_differences"])]
    unpaired = sorted({w for r in summary["paired_differences"]
                       for w in r["unpaired"]})
    if unpaired:
      text.append(f"without a run of the same seed in the other group: "
                  f"{', '.join(unpaired)}")
  text.append("")
  for r in summary["rises"]:
    span = f"iterations {r['iterations'][0]}-{r['iterations'][-1]}"
    text.append(
        f"{r['group']}: {r['key']} rises at every step of {span} in "
        f"{r['runs_rising']} of {r['runs']} runs; their mean "
        f"{'does' if r['mean_rising'] else 'does not'}")
  return "\n".join(text)


def summarize(runs: dict[str, list[Run]], keys: Sequence[str]) -> dict:
  """Every table of the report as rows (see the functions above)."""
  rises = []
  for name, group in runs.items():
    for key in filter(_is_share, keys):
      rise = rises_every_iteration(group, key)
      if len(rise["iterations"]) > 1:
        rises.append(dict(group=name, **rise))
  return dict(per_iteration=per_iteration(runs, keys),
              budget_curves=budget_curves(runs),
              method_differences=method_differences(runs),
              paired_differences=paired_differences(runs, keys),
              paired_budget_differences=paired_budget_differences(runs),
              rises=rises)


def write(summary: dict, out) -> None:
  """`summary.json` (a single run's NaN error as null) and the plots."""
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  strict = {part: [{k: None if isinstance(v, float) and math.isnan(v) else v
                    for k, v in row.items()} for row in rows]
            for part, rows in summary.items()}
  paths.write_atomic(out / "summary.json", json.dumps(strict, indent=1))
  accuracy = [r for r in summary["per_iteration"] if "accuracy" in r["key"]]
  if accuracy:
    plots.accuracy_per_iteration_over_runs(
        accuracy, out / "accuracy_per_iteration.png")
  if summary["budget_curves"]:
    plots.accuracy_vs_budget_over_runs(
        summary["budget_curves"], out / "accuracy_vs_budget.png")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _RUNS.value:
    raise app.UsageError("give at least one --runs=name:dir,dir,...")
  try:
    runs = load_groups(parse_groups(_RUNS.value))
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  keys = [k for k in _METRICS.value.split(",") if k]
  summary = summarize(runs, keys)
  print(report(summary, keys))
  if _OUT.value:
    write(summary, _OUT.value)


if __name__ == "__main__":
  app.run(main)
