"""GSM8K: grade-school word problems with a numeric final answer.

The official JSONL has `question` and `answer`; the answer is a rationale, one
reasoning step per line with calculator annotations such as `<<48/2=24>>`,
followed by `#### <final number>`. Solutions here use one step per line and
end with the step `The answer is: <number>`. Answers are compared as exact
rationals, never as floats.
"""

import dataclasses
import decimal
import fractions
import os
import re

from restmcts_jax.tasks import jsonl

ANSWER_MARKER = "The answer is:"

_FINAL_MARK = "####"
_MARKER_RE = re.compile(f"{re.escape(ANSWER_MARKER)}|{_FINAL_MARK}")
# A number, maybe with `$`, a sign, thousands commas, decimals or `a/b`.
_NUMBER_RE = re.compile(r"\s*((?:-\$?|\$?-?)[\d,]*\.?\d+(?:/0*[1-9]\d*)?)")
_CALCULATOR_RE = re.compile(r"<<[^>]*>>")


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem.

  Attributes:
    question: the problem text.
    answer: the dataset's rationale, ending with `#### <final number>`.
    final_answer: the normalized final number.
    steps: the solution as step lines; the last is `The answer is: <number>`.
  """

  question: str
  answer: str
  final_answer: str
  steps: tuple[str, ...]


def normalize_number(number: str) -> str:
  """Canonical text of a number: `$1,234.50` -> `1234.5`, `18.00` -> `18`.

  Raises:
    ValueError: `number` is not a number.
  """
  text = number.strip().replace(",", "").replace("$", "").rstrip(".")
  value = fractions.Fraction(text)
  if value.denominator == 1:
    return str(value.numerator)
  if "/" in text:
    return str(value)
  # Trailing zeros dropped by hand: `Decimal.normalize` rounds to 28 digits.
  return format(decimal.Decimal(text), "f").rstrip("0").rstrip(".")


def extract_answer(text: str) -> str | None:
  """The normalized number after the last answer marker (or `####`); None
  where there is none, or where what follows only looks like one (a model's
  `1.5/2`: a decimal over a number is no rational the grader can compare)."""
  markers = list(_MARKER_RE.finditer(text))
  if not markers:
    return None
  match = _NUMBER_RE.match(text, markers[-1].end())
  if match is None:
    return None
  try:
    return normalize_number(match.group(1))
  except ValueError:
    return None


def is_correct(prediction_text: str, reference: str) -> bool:
  """Whether the answer in `prediction_text` equals the number `reference`."""
  prediction = extract_answer(prediction_text)
  return prediction is not None and fractions.Fraction(
      prediction) == fractions.Fraction(normalize_number(reference))


def steps_from_answer(answer: str) -> tuple[str, ...]:
  """Step lines of a dataset answer, without calculator annotations, ending
  with `The answer is: <number>`.

  Raises:
    ValueError: the answer has no `#### <number>`.
  """
  rationale, mark, _ = answer.rpartition(_FINAL_MARK)
  final = extract_answer(answer)
  if not mark or final is None:
    raise ValueError(f"no '{_FINAL_MARK} <number>' in answer")
  lines = (_CALCULATOR_RE.sub("", line).strip()
           for line in rationale.splitlines())
  return (*(line for line in lines if line), f"{ANSWER_MARKER} {final}")


question_text = jsonl.question_line


def _example(row: dict) -> Example:
  jsonl.require_strings(row, ("question", "answer"))
  return Example(question=row["question"], answer=row["answer"],
                 final_answer=extract_answer(row["answer"]),
                 steps=steps_from_answer(row["answer"]))


def load_jsonl(path: str | os.PathLike) -> list[Example]:
  """Examples of a GSM8K JSONL file; blank lines are skipped.

  Raises:
    ValueError: a line is malformed; the message names `path` and the line.
  """
  return jsonl.read_jsonl(path, _example)
