"""Grading predictions with a task's verifier: the CLI and its errors."""

import json
import pathlib
import subprocess
import sys

import pytest

from restmcts_jax import evaluate
from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry

GSM8K = (pathlib.Path(__file__).resolve().parent / "data"
    / "gsm8k_train_sample.jsonl")


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _run(*args):
  return subprocess.run([sys.executable, "-m", "restmcts_jax.evaluate", *args],
                        capture_output=True, text=True, check=False)


def test_game24_predictions_are_graded_by_the_exact_verifier(tmp_path):
  task = registry.get_task("game24")
  problems, _ = evaluate.prediction_problems(task, None)
  assert len(problems) == 100  # the benchmark: ranks 901-1000
  rows = []
  for i, p in enumerate(problems[:10]):
    steps = game24.solve(p.reference)
    text = "".join(s + "\n" for s in steps)
    if i % 3 == 0:  # a wrong answer: right syntax, not 24
      text = text.replace("Answer:", "Answer: 1 +")
    rows.append(dict(question=p.question, prediction=text))
  preds = _write(tmp_path / "preds.jsonl", rows)
  out = _run("--task=game24", f"--predictions={preds}")
  assert out.returncode == 0, out.stderr
  # 10 predicted, 6 right, out of the 100 test puzzles.
  assert "RESULT accuracy_predictions 0.0600" in out.stdout
  assert "game24 |      100 |        10 |       6 |" in out.stdout
  # Other puzzles come from --data: here a file of just those ten.
  csv = tmp_path / "ten.csv"
  csv.write_text(game24.tot_csv_text(p.reference for p in problems[:10]))
  out = _run("--task=game24", f"--data={csv}", f"--predictions={preds}")
  assert "RESULT accuracy_predictions 0.6000" in out.stdout, out.stderr
  # A puzzle outside the test ranks is refused, and the error says why.
  outside = _write(tmp_path / "out.jsonl", [dict(
      question=task.load(None)[0].question, prediction="")])
  out = _run("--task=game24", f"--predictions={outside}")
  assert out.returncode != 0 and "out.jsonl:1" in out.stderr
  assert "ranks 901-1000" in out.stderr


def test_gsm8k_predictions_match_questions_by_text(tmp_path):
  task = registry.get_task("gsm8k")
  problems = task.load(GSM8K)
  rows = [dict(question="  " + p.question.replace(" ", "  ") + " ",
               prediction=f"So it is.\nThe answer is: {p.reference}\n")
          for p in problems[:4]]
  rows.append(dict(question=problems[4].question, prediction="The answer is: -1"))
  problems_graded = evaluate.grade_predictions(
      task, problems, evaluate.read_predictions(
          _write(tmp_path / "p.jsonl", rows),
          {evaluate._key(p.question) for p in problems}))
  assert problems_graded == dict(problems=300, predicted=5, correct=4,
                                 accuracy=4 / 300)


@pytest.mark.parametrize("line,message", [
    ("not json", "p.jsonl:2: expected a JSON object"),
    ('{"question": "Use 1 1 1 1 to make 24."}', "p.jsonl:2: expected"),
    ('{"question": "nope", "prediction": ""}', "p.jsonl:2: question not in"),
])
def test_bad_prediction_lines_name_file_and_line(tmp_path, line, message):
  task = registry.get_task("game24")
  known = {evaluate._key(p.question) for p in task.load(None)}
  first = json.dumps(dict(question=task.load(None)[0].question, prediction=""))
  path = tmp_path / "p.jsonl"
  path.write_text(first + "\n" + line + "\n")
  with pytest.raises(ValueError, match=message):
    evaluate.read_predictions(path, known)


def test_repeated_question_and_unknown_task(tmp_path):
  task = registry.get_task("game24")
  q = task.load(None)[0].question
  path = _write(tmp_path / "p.jsonl", [dict(question=q, prediction="")] * 2)
  with pytest.raises(ValueError, match="p.jsonl:2: second prediction"):
    evaluate.read_predictions(path, {evaluate._key(q)})
  with pytest.raises(ValueError, match="unknown task 'chess'"):
    registry.get_task("chess")
  out = _run("--task=game24", f"--predictions={tmp_path / 'missing.jsonl'}")
  assert out.returncode != 0 and "missing.jsonl" in out.stderr
