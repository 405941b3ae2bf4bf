"""PNG plots of a run's results (matplotlib, no display needed)."""

import io
from collections.abc import Sequence

import matplotlib
from etils import epath

matplotlib.use("Agg")  # files only: no display on servers and TPU VMs
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

from restmcts_jax import paths  # pylint: disable=g-import-not-at-top

METHOD_LABELS = {"greedy": "CoT (greedy)", "sc": "Self-Consistency",
                 "bon": "Best-of-N", "tot": "ToT-BFS", "mcts": "MCTS*"}


def _save(fig, path) -> epath.Path:
  """Writes `fig` to `path` (local or a URL); a reader never sees half a
  PNG."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
  plt.close(fig)
  paths.write_atomic(path, png.getvalue())
  return path


def _tokens_axis(ax) -> None:
  """A log x axis of tokens, labelled at powers of 2 (budgets double)."""
  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("policy tokens per question")


def _label(key: str) -> str:
  """A metrics key's legend text: the method's name or pass@1."""
  if key == "sample_accuracy":
    return "policy samples (pass@1)"
  return METHOD_LABELS.get(key.removeprefix("accuracy_"), key)


def accuracy_per_iteration(metrics: Sequence[dict], path, *,
                           title: str = "") -> epath.Path:
  """Accuracy of each method (at the main budget) per self-training
  iteration, from metrics rows with `iteration` and `accuracy_<method>`;
  dashed, the share of sampled solutions that are correct
  (`sample_accuracy`: the sampling policy's pass@1)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  keys = [f"accuracy_{m}" for m in METHOD_LABELS] + ["sample_accuracy"]
  for key in keys:
    points = [(m["iteration"], m[key]) for m in metrics if key in m]
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, "--" if key == "sample_accuracy" else "-", marker="o",
              label=_label(key))
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel("self-training iteration (0 = warm start)")
  ax.set_ylabel("test accuracy")
  ax.set_title(title or "Accuracy per iteration")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def accuracy_vs_budget(rows: Sequence[dict], path, *,
                       title: str = "") -> epath.Path:
  """Accuracy against measured policy tokens per question, one line per
  method, from rows with `method`, `policy_tokens` and `accuracy`."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, label in METHOD_LABELS.items():
    points = sorted((r["policy_tokens"], r["accuracy"]) for r in rows
                    if r["method"] == method)
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, marker="o", label=label)
  _tokens_axis(ax)
  ax.set_ylabel("test accuracy")
  ax.set_title(title or "Accuracy vs token budget")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return _save(fig, path)


def accuracy_per_iteration_over_runs(rows: Sequence[dict], path, *,
                                     title: str = "") -> epath.Path:
  """One panel per metric, one line per group of runs: the mean over the
  group's runs per iteration with standard-error bars, from rows with
  `group`, `iteration`, `key`, `mean` and `error` (NaN: no bar)."""
  keys = list(dict.fromkeys(r["key"] for r in rows))
  groups = list(dict.fromkeys(r["group"] for r in rows))
  columns = min(len(keys), 3)
  height = -(-len(keys) // columns)
  fig, axes = plt.subplots(height, columns, squeeze=False, sharex=True,
                           figsize=(4.2 * columns, 3.2 * height))
  for ax, key in zip(axes.flat, keys):
    for group in groups:
      points = sorted((r["iteration"], r["mean"], r["error"]) for r in rows
                      if r["group"] == group and r["key"] == key)
      if points:
        xs, ys, errors = zip(*points)
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=group)
    ax.set_title(_label(key))
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in axes.flat[len(keys):]:
    ax.set_visible(False)
  for ax in axes[:, 0]:
    ax.set_ylabel("test accuracy")
  for ax in axes[-1]:
    ax.set_xlabel("iteration")
  fig.suptitle(title or "Mean ± standard error over runs")
  fig.tight_layout()
  return _save(fig, path)


def accuracy_vs_budget_over_runs(rows: Sequence[dict], path, *,
                                 title: str = "") -> epath.Path:
  """One panel per group of runs, one line per method: mean accuracy with
  standard-error bars against mean policy tokens per question, from rows
  with `group`, `iteration`, `method`, `policy_tokens`, `mean` and
  `error`."""
  groups = list(dict.fromkeys(r["group"] for r in rows))
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4),
                           squeeze=False, sharey=True)
  for ax, group in zip(axes[0], groups):
    for method, label in METHOD_LABELS.items():
      points = sorted((r["policy_tokens"], r["mean"], r["error"]) for r in rows
                      if r["group"] == group and r["method"] == method)
      if points:
        xs, ys, errors = zip(*points)
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
    _tokens_axis(ax)
    iteration = next(r["iteration"] for r in rows if r["group"] == group)
    ax.set_title(f"{group}, iteration {iteration}")
    ax.grid(alpha=0.3, which="both")
  axes[0, 0].set_ylabel("test accuracy")
  axes[0, 0].legend()
  fig.suptitle(title or "Accuracy vs token budget, mean ± standard error "
               "over runs")
  fig.tight_layout()
  return _save(fig, path)
