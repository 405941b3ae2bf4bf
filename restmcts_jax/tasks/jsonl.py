"""Reading task data from JSONL files, one example per line."""

import json
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from etils import epath

T = TypeVar("T")


def read_jsonl(path: str | os.PathLike, parse: Callable[[dict], T]) -> list[T]:
  """`parse(row)` of every non-blank line of `path` (local or a URL).

  Raises:
    ValueError: a line is not JSON, not an object, or `parse` rejects it; the
      message names `path` and the 1-based line number.
  """
  examples = []
  with epath.Path(path).open(encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict):
          raise ValueError("not a JSON object")
        examples.append(parse(row))
      except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}:{line_number}: {e}") from e
  return examples


def require_strings(row: dict, keys: Sequence[str]) -> None:
  """ValueError unless every key of `row` holds a string."""
  for key in keys:
    if not isinstance(row.get(key), str):
      raise ValueError(f"missing or non-string '{key}'")


def question_line(text: str) -> str:
  """A question as a prompt: stripped, ending with the step delimiter."""
  return text.strip() + "\n"
