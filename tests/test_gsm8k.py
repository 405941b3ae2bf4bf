"""GSM8K loading, step format, answer extraction and exact comparison."""

import json
import pathlib

import hypothesis
import pytest

from restmcts_jax.tasks import gsm8k

SAMPLE = (pathlib.Path(__file__).resolve().parent / "data"
    / "gsm8k_train_sample.jsonl")


@pytest.fixture(scope="module")
def sample():
  rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
  return rows, gsm8k.load_jsonl(SAMPLE)


def test_sample_parses(sample):
  rows, examples = sample
  assert len(rows) == len(examples) == 300
  for row, example in zip(rows, examples):
    final = row["answer"].split("####")[-1].strip()
    assert example.question == row["question"]
    assert example.final_answer == final
    assert gsm8k.extract_answer(row["answer"]) == final
    assert gsm8k.is_correct(row["answer"], final)


def test_sample_steps(sample):
  _, examples = sample
  for example in examples:
    *rationale, last = example.steps
    assert rationale
    assert last == f"{gsm8k.ANSWER_MARKER} {example.final_answer}"
    assert gsm8k.extract_answer(last) == example.final_answer
    for step in example.steps:
      assert step and step == step.strip()
      assert "\n" not in step
      assert "<<" not in step and ">>" not in step
      assert "####" not in step
    assert not any(gsm8k.ANSWER_MARKER in s for s in rationale)


def test_steps_from_answer():
  answer = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n\n"
            "She earned $<<0.2*50=10>>10.\n#### 1,072")
  assert gsm8k.steps_from_answer(answer) == (
      "Natalia sold 48/2 = 24 clips in May.", "She earned $10.",
      "The answer is: 1072")
  with pytest.raises(ValueError, match="####"):
    gsm8k.steps_from_answer("No final number.\n#### n/a")


@pytest.mark.parametrize("text, expected", [
    ("The answer is: 72", "72"),
    ("#### 72", "72"),
    ("The answer is: 18.00", "18"),
    ("The answer is: $18.00.", "18"),
    ("The answer is: $1,234,567", "1234567"),
    ("The answer is:1,000 apples.", "1000"),
    ("The answer is: -3", "-3"),
    ("The answer is: -$3.50", "-3.5"),
    ("The answer is: 0.50", "0.5"),
    ("The answer is: .25", "0.25"),
    ("The answer is: 1.000000000000000000000000000010",  # past 28 digits
     "1.00000000000000000000000000001"),
    ("The answer is: 3/4", "3/4"),
    ("The answer is: 6/3", "2"),
    ("The answer is: 100", "100"),
    ("Step 1 is 5.\nThe answer is: 5\nThe answer is: 6", "6"),
    ("The answer is 5", None),
    ("The answer is: five", None),
    ("The answer is: 1.5/2", None),  # matches the pattern, no rational
    ("12 + 30 = 42", None),
    ("", None),
])
def test_extract_answer(text, expected):
  assert gsm8k.extract_answer(text) == expected


@pytest.mark.parametrize("prediction, reference, expected", [
    ("The answer is: 18.00", "18", True),
    ("The answer is: $1,000", "1000", True),
    ("The answer is: 0.5", "1/2", True),
    ("The answer is: 7.", "7", True),
    ("#### 42", "42.0", True),
    ("The answer is: 17", "18", False),
    ("The answer is: 0.1", "0.10000000000000001", False),
    ("The answer is: 12345678901234567891", "12345678901234567890", False),
    ("The answer is: -5", "5", False),
    ("It is 18.", "18", False),
    ("The answer is: 1.5/2", "3", False),
    ("The answer is: 1.00000000000000000000000000001", "1", False),
])
def test_is_correct(prediction, reference, expected):
  assert gsm8k.is_correct(prediction, reference) is expected


@hypothesis.settings(deadline=None, max_examples=300)
@hypothesis.given(hypothesis.strategies.text(
    alphabet="0123456789.,/$- x", max_size=12))
def test_any_model_answer_grades_without_raising(tail):
  """A sampled solution can end in anything: grading must say right or
  wrong, never raise (a raise would stop the self-training run)."""
  answer = gsm8k.extract_answer(gsm8k.ANSWER_MARKER + " " + tail)
  assert answer is None or gsm8k.is_correct(
      gsm8k.ANSWER_MARKER + " " + answer, answer)


def test_question_text():
  text = gsm8k.question_text("  How many clips?  ")
  assert text == "How many clips?\n"


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "Expecting"),
    ('{"question": "Q"}', "'answer'"),
    ('{"question": 3, "answer": "#### 1"}', "'question'"),
    ('{"question": "Q", "answer": "no final number"}', "####"),
    ('["Q", "#### 1"]', "not a JSON object"),
])
def test_load_jsonl_malformed(tmp_path, bad_line, reason):
  path = tmp_path / "bad.jsonl"
  good = json.dumps({"question": "Q", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"})
  path.write_text(f"{good}\n\n{bad_line}\n{good}\n")
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: ") as info:
    gsm8k.load_jsonl(path)
  assert str(path) in str(info.value)
  assert reason in str(info.value)


def test_load_jsonl_skips_blank_lines(tmp_path):
  path = tmp_path / "ok.jsonl"
  row = {"question": "Q", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}
  path.write_text(f"\n{json.dumps(row)}\n\n")
  (example,) = gsm8k.load_jsonl(path)
  assert example.steps == ("1 + 1 = 2", "The answer is: 2")
  assert example.final_answer == "2"
