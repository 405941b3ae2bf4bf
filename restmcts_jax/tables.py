"""Plain-text tables for command-line reports."""

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """Right-aligned columns separated by ` | `, a rule under the header."""
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda r: " | ".join(f"{str(x):>{w}}" for x, w in zip(r, widths))
  return "\n".join([line(header), "-" * len(line(header))]
                   + [line(r) for r in rows])


# metrics.jsonl keys of a run's table, and their column names.
RUN_COLUMNS = (("accuracy_greedy", "greedy"), ("sample_accuracy", "pass@1"),
               ("accuracy_sc", "SC"), ("accuracy_bon", "BoN"),
               ("accuracy_tot", "ToT"), ("accuracy_mcts", "MCTS*"),
               ("search_solved", "searched solved"), ("traces", "traces"))


def _percent(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def run_report(metrics: Sequence[dict], evaluations: Sequence[dict]) -> str:
  """A run's results as two tables: per iteration (metrics.jsonl rows;
  shares in %), and accuracy vs budget at the last iteration (eval.jsonl
  rows: accuracy in % and policy tokens per question, per method and
  budget)."""
  columns = [(k, name) for k, name in RUN_COLUMNS
             if any(k in m for m in metrics)]
  text = ["Accuracy % per iteration (0: the warm start; methods at the main "
          "budget):", text_table(
              ["iteration", *(name for _, name in columns)],
              [[m["iteration"], *(m[k] if k == "traces" and k in m
                                  else _percent(m.get(k)) for k, _ in columns)]
               for m in metrics])]
  last = metrics[-1]["iteration"] if metrics else None
  cells = {(e["method"], e["samples"]): e for e in evaluations
           if e["iteration"] == last and e["method"] != "greedy"}
  budgets = sorted({n for _, n in cells})
  if budgets:
    names = {k.removeprefix("accuracy_"): name for k, name in RUN_COLUMNS}
    cell = lambda e: f"{_percent(e['accuracy'])} ({e['policy_tokens']:.0f})"
    text += ["", f"Iteration {last}, accuracy % (policy tokens per question) "
             "at budgets of N samples' tokens:", text_table(
                 ["method", *(f"N = {n}" for n in budgets)],
                 [[names.get(method, method),
                   *(cell(cells[method, n]) if (method, n) in cells else "-"
                     for n in budgets)]
                  for method in dict.fromkeys(m for m, _ in cells)])]
  return "\n".join(text)
