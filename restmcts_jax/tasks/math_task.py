"""MATH (Hendrycks et al.): competition problems with LaTeX answers.

The JSONL has `problem` and `solution`; the final answer is the last
`\\boxed{...}` (or `\\fbox{...}`) of the solution. Solutions here are one
sentence or line per step, ending with the step `Answer: \\boxed{<answer>}`.
Answers are compared with `math_verify`, so `\\frac{1}{2}`, `0.5` and
`\\dfrac12` are equal, as are `2\\sqrt{2}` and `\\sqrt{8}`.

(Named `math_task` rather than `math`: a `math.py` shadows the standard library
for any script run from this folder.)
"""

import dataclasses
import os
import re
import threading

import math_verify

from restmcts_jax.tasks import jsonl

ANSWER_MARKER = "Answer:"

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_UNBRACED_RE = re.compile(r"\s+([^\s${][^\s$]*)")  # `\boxed 5`
# Math-mode openers and their closers; `\begin{env}` closes with `\end{env}`.
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)"))
_BEGIN_RE = re.compile(r"\\begin\{([^}]*)\}")
_SENTENCE_END = ".!?"
# `math_verify` times out through SIGALRM, which works on the main thread only.
_TIMEOUT_S = 5


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem.

  Attributes:
    question: the problem text.
    answer: the dataset's solution.
    final_answer: the content of its last `\\boxed{...}`.
    steps: the solution as step lines; the last is `Answer: \\boxed{...}`.
  """

  question: str
  answer: str
  final_answer: str
  steps: tuple[str, ...]


def extract_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` / `\\fbox{...}` (braces may nest;
  `\\boxed 5` also counts), or None when absent or unclosed."""
  commands = list(_BOXED_RE.finditer(text))
  if not commands:
    return None
  rest = text[commands[-1].end():]
  unbraced = _UNBRACED_RE.match(rest)
  if unbraced:
    return unbraced.group(1)
  rest = rest.lstrip()
  if not rest.startswith("{"):
    return None
  depth, i = 0, 0
  while i < len(rest):
    if rest[i] == "\\":
      i += 2
      continue
    if rest[i] == "{":
      depth += 1
    elif rest[i] == "}":
      depth -= 1
      if depth == 0:
        return rest[1:i]
    i += 1
  return None


def _timeout() -> int | None:
  main = threading.current_thread() is threading.main_thread()
  return _TIMEOUT_S if main else None


def _parse(text: str) -> list:
  boxed = extract_boxed(text)
  expression = text if boxed is None else boxed
  return math_verify.parse(f"${expression}$", parsing_timeout=_timeout())


def is_equivalent(pred: str, ref: str) -> bool:
  """Whether two answers are mathematically equal (`math_verify` rules).

  Each is an answer expression or a text whose last `\\boxed{...}` holds it.
  """
  return math_verify.verify(_parse(ref), _parse(pred),
                            timeout_seconds=_timeout())


def is_correct(solution_text: str, reference: str) -> bool:
  """Whether a solution's last `\\boxed{...}` equals `reference`. A text
  without one has no answer: its question or unfinished work may hold an
  expression equal to it ("Compute 7 - 2." against 5)."""
  answer = extract_boxed(solution_text)
  return answer is not None and is_equivalent(answer, reference)


def _math_span(text: str, i: int) -> tuple[str, str] | None:
  """`(opener, closer)` of a math span starting at `text[i]`, if any."""
  begin = _BEGIN_RE.match(text, i)
  if begin:
    return begin.group(0), f"\\end{{{begin.group(1)}}}"
  for opener, closer in _MATH_DELIMITERS:
    if text.startswith(opener, i):
      return opener, closer
  return None


def steps_from_solution(solution: str) -> tuple[str, ...]:
  """Step lines of a solution, ending with `Answer: \\boxed{<answer>}`.

  Steps end at line breaks and at sentence ends (`.`, `!`, `?` before a space)
  outside math; a math span is kept in one step. Whitespace runs become one
  space.

  Raises:
    ValueError: the solution has no `\\boxed{...}`.
  """
  answer = extract_boxed(solution)
  if answer is None:
    raise ValueError("no \\boxed{...} in solution")
  steps, current, closer, i = [], [], None, 0
  while i < len(solution):
    if closer is not None and solution.startswith(closer, i):
      current.append(closer)
      i += len(closer)
      closer = None
      continue
    span = None if closer is not None else _math_span(solution, i)
    if span is not None:
      current.append(span[0])
      i += len(span[0])
      closer = span[1]
      continue
    char = solution[i]
    if char == "\\":
      current.append(solution[i:i + 2])
      i += 2
      continue
    current.append(char)
    i += 1
    if closer is None and (char == "\n" or (
        char in _SENTENCE_END and solution[i:i + 1].isspace())):
      steps.append(" ".join("".join(current).split()))
      current = []
  steps.append(" ".join("".join(current).split()))
  return (*(s for s in steps if s), f"{ANSWER_MARKER} \\boxed{{{answer}}}")


question_text = jsonl.question_line


def _example(row: dict) -> Example:
  jsonl.require_strings(row, ("problem", "solution"))
  return Example(question=row["problem"], answer=row["solution"],
                 final_answer=extract_boxed(row["solution"]),
                 steps=steps_from_solution(row["solution"]))


def load_jsonl(path: str | os.PathLike) -> list[Example]:
  """Examples of a MATH JSONL file; blank lines are skipped.

  Raises:
    ValueError: a line is malformed; the message names `path` and the line.
  """
  return jsonl.read_jsonl(path, _example)
