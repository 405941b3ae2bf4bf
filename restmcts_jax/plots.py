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


def accuracy_per_iteration(metrics: Sequence[dict], path, *,
                           title: str = "") -> epath.Path:
  """Accuracy of each method (at the main budget) per self-training
  iteration, from metrics rows with `iteration` and `accuracy_<method>`;
  dashed, the share of sampled solutions that are correct
  (`sample_accuracy`: the sampling policy's pass@1)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  lines = [(f"accuracy_{m}", label, "-") for m, label in METHOD_LABELS.items()]
  lines.append(("sample_accuracy", "policy samples (pass@1)", "--"))
  for key, label, style in lines:
    points = [(m["iteration"], m[key]) for m in metrics if key in m]
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, style, marker="o", label=label)
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
  ax.set_xscale("log")
  ax.set_xlabel("policy tokens per question")
  ax.set_ylabel("test accuracy")
  ax.set_title(title or "Accuracy vs token budget")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return _save(fig, path)
