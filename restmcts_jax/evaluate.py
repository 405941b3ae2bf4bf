r"""Grades solutions of any model with a task's verifier.

    python -m restmcts_jax.evaluate --task=game24 --predictions=preds.jsonl
    python -m restmcts_jax.evaluate --task=gsm8k --data=test.jsonl \
        --predictions=preds.jsonl

`--predictions` is a JSONL file with one `{"question": ..., "prediction": ...}`
per line; each question is matched to the task's data by its text (spaces
collapsed). Questions without a prediction count as wrong. Prints a table,
then `RESULT accuracy_predictions <fraction>`.
"""

import json
import pathlib
from collections.abc import Sequence

from absl import app
from absl import flags

from restmcts_jax.tasks import registry

_TASK = flags.DEFINE_enum("task", "game24", sorted(registry.TASKS), "Task.")
_DATA = flags.DEFINE_string(
    "data", None, "Task data file (game24: a Tree-of-Thoughts puzzle CSV, "
    "default the bundled list; gsm8k / math: JSONL).")
_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "JSONL of {question, prediction} to grade.",
    required=True)


def _key(question: str) -> str:
  return " ".join(question.split())


def read_predictions(path, known: set[str]) -> dict[str, str]:
  """`{question key: prediction}`; ValueError naming file and line on a
  malformed line, an unknown question or a repeated one."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no predictions file at {path}")
  out = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      row = json.loads(line)
      question, prediction = row["question"], row["prediction"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{where}: expected a JSON object with 'question' and "
                       f"'prediction' ({e})") from e
    key = _key(question)
    if key not in known:
      raise ValueError(f"{where}: question not in the task data: "
                       f"{question[:80]!r}")
    if key in out:
      raise ValueError(f"{where}: second prediction for {question[:80]!r}")
    out[key] = str(prediction)
  return out


def grade_predictions(task: registry.Task,
                      problems: Sequence[registry.Problem],
                      predictions: dict[str, str]) -> dict[str, float]:
  """Counts and accuracy of `predictions` over all `problems`."""
  correct = sum(
      task.is_correct(predictions[_key(p.question)], p.reference)
      for p in problems if _key(p.question) in predictions)
  return dict(problems=len(problems), predicted=len(predictions),
              correct=correct, accuracy=correct / max(len(problems), 1))


def main(argv):
  del argv
  task = registry.get_task(_TASK.value)
  problems = task.load(_DATA.value)
  predictions = read_predictions(_PREDICTIONS.value,
                                 {_key(p.question) for p in problems})
  result = grade_predictions(task, problems, predictions)
  print(f"{'task':>8} | {'problems':>8} | {'predicted':>9} | {'correct':>7} | "
        f"{'accuracy':>8}")
  print(f"{task.name:>8} | {result['problems']:>8} | "
        f"{result['predicted']:>9} | {result['correct']:>7} | "
        f"{result['accuracy']:>8.3f}")
  print(f"RESULT accuracy_predictions {result['accuracy']:.4f}")


if __name__ == "__main__":
  app.run(main)
