r"""Evaluates a checkpoint's reasoning methods, or grades any model's solutions,
with a task's verifier.

    python -m restmcts_jax.evaluate --checkpoint=runs/game24 \
        --methods=greedy,sc,bon,tot,mcts --budget=4
    python -m restmcts_jax.evaluate --task=game24 --predictions=preds.jsonl
    python -m restmcts_jax.evaluate --task=game24 --data=puzzles.csv \
        --predictions=preds.jsonl
    python -m restmcts_jax.evaluate --task=gsm8k --data=test.jsonl \
        --predictions=preds.jsonl

`--checkpoint` is a workdir of `python -m restmcts_jax.main`: its latest
checkpoint solves the problems of `--data` (default: the run's test problems)
with each method at `--budget` CoT samples' worth of policy tokens.
`--predictions` is a JSONL file with one `{"question": ..., "prediction": ...}`
per line; each question is matched to the task's data by its text (spaces
collapsed). Questions without a prediction count as wrong: accuracy is over
every problem of the data (game24 without `--data`: the benchmark's 100 test
puzzles, ranks 901-1000 of the bundled list). Both print a table,
then one line per method `RESULT accuracy_<method> <fraction>` (`predictions`
for a predictions file).
"""

import json
import pathlib
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

from restmcts_jax import cli_flags
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax import tables
from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry

_TASK = flags.DEFINE_enum(
    "task", None, sorted(registry.TASKS),
    "Task (default: the checkpoint's task, or game24).")
_DATA = flags.DEFINE_string(
    "data", None, "Task data file (game24: a Tree-of-Thoughts puzzle CSV, "
    "default the benchmark's test puzzles, ranks 901-1000, or with "
    "--checkpoint the run's own held-out split; gsm8k / math: JSONL).")
_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "JSONL of {question, prediction} to grade.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Workdir of `restmcts_jax.main` whose latest "
    "checkpoint to evaluate.")
_METHODS = flags.DEFINE_string(
    "methods", ",".join(evaluation.METHODS),
    "With --checkpoint: methods, comma-separated.")
_BUDGET = flags.DEFINE_integer(
    "budget", 4, "With --checkpoint: budget in CoT samples (SC/BoN N; ToT "
    "beam sized to N solutions' steps; MCTS* stops after N greedy "
    "solutions' tokens).")
_NUM_PROBLEMS = flags.DEFINE_integer(
    "num_problems", 0, "With --checkpoint: evaluate the first N problems "
    "(0: all).")
flags.register_validator(
    "budget", lambda b: b >= 1, message="--budget must be at least 1")
flags.register_multi_flags_validator(
    ["predictions", "checkpoint"],
    lambda f: (f["predictions"] is None) != (f["checkpoint"] is None),
    message="give exactly one of --predictions and --checkpoint")


def _key(question: str) -> str:
  return " ".join(question.split())


def read_predictions(path, known: set[str], data_name: str = "the task data"
                     ) -> dict[str, str]:
  """`{question key: prediction}`; ValueError naming file and line on a
  malformed line, a question not in `known` (from `data_name`) or a
  repeated one."""
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
      raise ValueError(f"{where}: question not in {data_name}: "
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


def evaluate_checkpoint(workdir, *, task_name: str | None, data: str | None,
                        methods: Sequence[str], budget: int,
                        num_problems: int = 0
                        ) -> list[evaluation.MethodResult]:
  """Every method at `budget` with the latest checkpoint of `workdir`."""
  config, tokenizer, models, meta = experiment.restore(workdir)
  task = registry.get_task(task_name or config.task)
  if data is not None or task.name != config.task:
    problems = task.load(data)
  else:
    problems = experiment.load_data(config, warm_start=False).test
  problems = problems[:num_problems or None]
  config.task = task.name  # its answer marker ends a solution
  iteration = meta["metrics"][-1]["iteration"] if meta["metrics"] else 0
  # The loop's evaluation seed of the checkpoint's iteration.
  results, _ = evaluation.evaluate(
      models, experiment.eval_context(config, tokenizer), problems,
      methods=methods, budgets=[budget],
      seed=config.seed + 7919 * iteration)
  return results


def _main_checkpoint():
  methods = experiment.parse_methods(_METHODS.value, key="--methods")
  results = evaluate_checkpoint(
      _CHECKPOINT.value, task_name=_TASK.value, data=_DATA.value,
      methods=methods, budget=_BUDGET.value, num_problems=_NUM_PROBLEMS.value)
  print(tables.text_table(
      ("method", "samples", "accuracy", "sample acc", "policy tokens/q",
       "value tokens/q"),
      [(r.method, r.samples, f"{r.accuracy:.3f}",
        "-" if r.sample_accuracy is None else f"{r.sample_accuracy:.3f}",
        f"{r.policy_tokens:.1f}", f"{r.value_tokens:.1f}") for r in results]))
  for r in results:
    print(f"RESULT accuracy_{r.method} {r.accuracy:.4f}")


def prediction_problems(task: registry.Task, data: str | None
                        ) -> tuple[list[registry.Problem], str]:
  """The problems a predictions file is graded over, and what to call them:
  `data`'s, or for game24 without `data` the benchmark's test puzzles (what
  papers report; the whole bundled list would put 1,262 unasked puzzles in
  the denominator)."""
  if data is None and task.name == "game24":
    return ([registry.game24_problem(p) for p in game24.splits().test],
            "the benchmark's test puzzles (ranks 901-1000; --data=FILE "
            "grades others)")
  return task.load(data), data or "the task data"


def _main_predictions():
  task = registry.get_task(_TASK.value or "game24")
  problems, data_name = prediction_problems(task, _DATA.value)
  predictions = read_predictions(
      _PREDICTIONS.value, {_key(p.question) for p in problems}, data_name)
  result = grade_predictions(task, problems, predictions)
  print(tables.text_table(
      ("task", "problems", "predicted", "correct", "accuracy"),
      [(task.name, result["problems"], result["predicted"], result["correct"],
        f"{result['accuracy']:.3f}")]))
  print(f"RESULT accuracy_predictions {result['accuracy']:.4f}")


def main(argv):
  del argv
  try:
    if _CHECKPOINT.value is not None:
      cli_flags.enable_compilation_cache()
      _main_checkpoint()
    else:
      _main_predictions()
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
