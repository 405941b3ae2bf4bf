"""Built-in tasks behind one interface: load problems, grade a solution.

    task = get_task("game24")
    problems = task.load(path)            # None: the task's bundled/default data
    task.is_correct(solution_text, problems[0].reference)
"""

import dataclasses
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from restmcts_jax.tasks import game24
from restmcts_jax.tasks import gsm8k
from restmcts_jax.tasks import math_task


@dataclasses.dataclass(frozen=True)
class Problem:
  """A question and what its verifier needs.

  Attributes:
    question: the prompt text (ends with a newline).
    reference: the oracle answer (or, for game24, the numbers).
    steps: a reference solution, one step per line, where the data has one.
  """

  question: str
  reference: Any
  steps: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Task:
  """Attributes:
    name: registry name.
    answer_marker: the text that starts a final step.
    load: `path -> problems`.
    is_correct: `(solution text, reference) -> bool`.
    extract_answer: `solution text -> answer` for majority voting (None if
      the text has no answer).
    same_answer: `(answer, answer) -> bool`, when equal answers can be
      written apart (`\\frac12`, `0.5`): votes then count by it. None: by
      the answers' equality.
  """

  name: str
  answer_marker: str
  load: Callable[[str | os.PathLike | None], Sequence[Problem]]
  is_correct: Callable[[str, Any], bool]
  extract_answer: Callable[[str], Hashable | None]
  same_answer: Callable[[Any, Any], bool] | None = None


def game24_problem(puzzle: game24.Puzzle) -> Problem:
  """A Game of 24 puzzle as a problem: its question, its numbers to check
  an answer against."""
  return Problem(game24.question_text(puzzle.numbers), puzzle.numbers)


def _load_game24(path):
  return [game24_problem(p) for p in game24.load_tot_csv(path)]


def _load_jsonl(module):
  def load(path):
    if path is None:
      raise ValueError(f"task {module.__name__.split('.')[-1]} needs a data "
                       "file (--data)")
    return [Problem(module.question_text(e.question), e.final_answer, e.steps)
            for e in module.load_jsonl(path)]
  return load


TASKS = {
    "game24": Task("game24", game24.ANSWER_MARKER, _load_game24,
                   lambda text, numbers: game24.verify(numbers, text),
                   game24.extract_answer),
    "gsm8k": Task("gsm8k", gsm8k.ANSWER_MARKER, _load_jsonl(gsm8k),
                  gsm8k.is_correct, gsm8k.extract_answer),
    "math": Task("math", math_task.ANSWER_MARKER, _load_jsonl(math_task),
                 math_task.is_correct, math_task.extract_boxed,
                 math_task.is_equivalent),
}


def get_task(name: str) -> Task:
  """The task called `name`; ValueError naming the known ones otherwise."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
  return TASKS[name]
