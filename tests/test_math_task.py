"""MATH loading, boxed-answer extraction, step format and equivalence."""

import json
import threading

import pytest

from restmcts_jax.tasks import math_task
from restmcts_jax.tasks import registry

SOLUTION = r"""We have \$5 and $x = 3.5$. Then
$$
\frac{a}{b} = 2. \\
c = 1
$$
Hence \begin{align*}
a &= 1. \\ b &= 2
\end{align*} and so on! Thus the answer is $\boxed{\frac{\sqrt{3}}{2}}$."""


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{5}$.", "5"),
    (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),
    (r"\boxed{1} then \boxed{\text{(B)}}", r"\text{(B)}"),
    (r"\fbox{a} and \boxed{b{c}d}", "b{c}d"),
    (r"\boxed{a} and \fbox{7}", "7"),
    (r"\boxed {7}", "7"),
    (r"the answer is \boxed 5$.", "5"),
    (r"\boxed{\frac{1}{2}", None),
    (r"\boxedx{3}", None),
    ("no answer here", None),
])
def test_extract_boxed(text, expected):
  assert math_task.extract_boxed(text) == expected


@pytest.mark.parametrize("pred, ref", [
    (r"\frac{1}{2}", "0.5"),
    (r"\dfrac12", r"\frac{1}{2}"),
    ("0.5", r"\dfrac12"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    ("x=3", "3"),
    ("3", "x = 3"),
    (r"\frac{\pi}{4}", r"\pi/4"),
    ("(1,2)", "(1, 2)"),
    ("[0,1)", "[0, 1)"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\{1,2\}", r"\{2,1\}"),
    (r"90^\circ", "90"),
    ("1,000", "1000"),
    (r"\$18.00", "18"),
    (r"\text{(B)}", "B"),
    (r"So the answer is $\boxed{\sqrt{8}}$.", r"2\sqrt{2}"),
])
def test_equivalent(pred, ref):
  assert math_task.is_equivalent(pred, ref)


@pytest.mark.parametrize("pred, ref", [
    ("6", "5"),
    (r"\frac{1}{3}", "0.33"),
    (r"-\frac12", "0.5"),
    (r"\sqrt{2}", "2"),
    ("(1,2)", "(2,1)"),
    ("x+1", "x-1"),
    (r"\infty", "0"),
    ("2", "x=2, y=3"),
    (r"\text{Monday}", r"\text{Tuesday}"),
    (r"\pi", "3.14"),
    ("", "3"),
    ("3", ""),
    (r"\boxed{1} then \boxed{2}", "1"),
])
def test_not_equivalent(pred, ref):
  assert not math_task.is_equivalent(pred, ref)


def test_a_solution_is_correct_only_by_its_boxed_answer():
  assert math_task.is_correct(r"2 + 3 = 5. Answer: \boxed{5}", "5")
  assert math_task.is_correct(r"\boxed{4} no, \boxed{\frac{10}{2}}", "5")
  assert not math_task.is_correct(r"Answer: \boxed{4}", "5")
  # Unfinished: the expression in the text equals the answer, but it is not
  # one (the whole text would parse as 7 - 2).
  assert math_task.is_equivalent("Compute 7 - 2. First", "5")
  assert not math_task.is_correct("Compute 7 - 2. First", "5")
  assert registry.get_task("math").is_correct is math_task.is_correct


def test_equivalent_off_the_main_thread():
  results = []
  worker = threading.Thread(
      target=lambda: results.append(math_task.is_equivalent("0.5", r"\frac12")))
  worker.start()
  worker.join()
  assert results == [True]


def test_steps_from_solution():
  assert math_task.steps_from_solution(SOLUTION) == (
      r"We have \$5 and $x = 3.5$.",
      "Then",
      r"$$ \frac{a}{b} = 2. \\ c = 1 $$",
      r"Hence \begin{align*} a &= 1. \\ b &= 2 \end{align*} and so on!",
      r"Thus the answer is $\boxed{\frac{\sqrt{3}}{2}}$.",
      r"Answer: \boxed{\frac{\sqrt{3}}{2}}",
  )
  with pytest.raises(ValueError, match="boxed"):
    math_task.steps_from_solution("No answer.")


def test_question_text():
  assert math_task.question_text(" Find $x$. \n") == "Find $x$.\n"


def test_load_jsonl(tmp_path):
  path = tmp_path / "math.jsonl"
  row = {"problem": "Find $x$.", "solution": SOLUTION, "level": "Level 2"}
  path.write_text(f"{json.dumps(row)}\n\n")
  (example,) = math_task.load_jsonl(path)
  assert example.question == "Find $x$."
  assert example.final_answer == r"\frac{\sqrt{3}}{2}"
  assert example.steps[-1] == (
      f"{math_task.ANSWER_MARKER} \\boxed{{{example.final_answer}}}")
  assert math_task.is_equivalent(example.steps[-1], r"\frac{\sqrt{3}}{2}")


@pytest.mark.parametrize("bad_line, reason", [
    ('{"problem": "P", "solution": ', "Expecting"),
    ('{"problem": "P"}', "'solution'"),
    ('{"problem": null, "solution": "\\\\boxed{1}"}', "'problem'"),
    ('{"problem": "P", "solution": "It is 1."}', "boxed"),
    ('"just a string"', "not a JSON object"),
])
def test_load_jsonl_malformed(tmp_path, bad_line, reason):
  path = tmp_path / "bad_math.jsonl"
  good = json.dumps({"problem": "P", "solution": r"So $\boxed{1}$."})
  path.write_text(f"{good}\n{bad_line}\n")
  with pytest.raises(ValueError, match=r"bad_math\.jsonl:2: ") as info:
    math_task.load_jsonl(path)
  assert str(path) in str(info.value)
  assert reason in str(info.value)
