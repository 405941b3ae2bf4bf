"""Game of 24 in the Tree-of-Thoughts step format, with an exact verifier.

A question is four numbers; a solution combines two of the remaining numbers
per step, one step per line, and ends with the whole expression:

    Use 4 9 10 13 to make 24.
    13 - 9 = 4 (left: 4 4 10)
    10 - 4 = 6 (left: 4 6)
    4 * 6 = 24 (left: 24)
    Answer: (13 - 9) * (10 - 4) = 24

Steps hold integers only, as in the Tree-of-Thoughts prompts. All arithmetic
is exact (`fractions.Fraction`); expressions are parsed with `ast` against a
whitelist of nodes and are never evaluated by Python.
"""

import ast
import csv
import dataclasses
import fractions
import functools
import importlib.resources
import io
import itertools
import operator
import random
import re
from collections.abc import Iterable, Sequence

Fraction = fractions.Fraction

TARGET = 24
ANSWER_MARKER = "Answer:"
TEST_RANKS = range(901, 1001)

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul,
        "/": operator.truediv}
_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub,
            ast.Mult: operator.mul, ast.Div: operator.truediv}
_ALLOWED_NODES = (ast.BinOp, ast.Constant, *_AST_OPS)
_STEP_RE = re.compile(
    r"\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*"
    r"\(left:\s*(-?\d+(?:\s+-?\d+)*)?\s*\)\s*", re.ASCII)
_EXPRESSION_CHARS = re.compile(r"[\d\s()+\-*/]+", re.ASCII)
_MAX_EXPRESSION_LEN = 200


@dataclasses.dataclass(frozen=True)
class Puzzle:
  """Four numbers (kept sorted) and, for listed puzzles, their difficulty.

  Attributes:
    numbers: the numbers, ascending.
    rank: difficulty rank in the Tree-of-Thoughts list (1 = easiest).
    solve_rate: share of human players who solved it, in [0, 1].
  """

  numbers: tuple[int, ...]
  rank: int | None = None
  solve_rate: float | None = None

  def __post_init__(self):
    object.__setattr__(self, "numbers", tuple(sorted(self.numbers)))


@dataclasses.dataclass(frozen=True)
class Splits:
  """Disjoint train / validation / test puzzles."""

  train: tuple[Puzzle, ...]
  validation: tuple[Puzzle, ...]
  test: tuple[Puzzle, ...]


def question_text(numbers: Sequence[int]) -> str:
  """The question, ending with the step delimiter."""
  return f"Use {_join(numbers)} to make {TARGET}.\n"


def format_text(numbers: Sequence[int], steps: Sequence[str]) -> str:
  """Question followed by solution lines, one per step."""
  return question_text(numbers) + "".join(s + "\n" for s in steps)


# Data.


def load_tot_csv(path=None) -> tuple[Puzzle, ...]:
  """Parses a Tree-of-Thoughts puzzle list (`Rank`, `Puzzles`, `Solved rate`).

  Args:
    path: CSV file; by default the bundled copy of the 1,362 puzzles.

  Returns:
    The puzzles in file order.

  Raises:
    ValueError: naming the file and line of a malformed row.
  """
  if path is None:
    resource = importlib.resources.files(__package__) / "data/game24_tot.csv"
    return _parse_csv(resource.read_text(), str(resource))
  with open(path, newline="") as f:
    return _parse_csv(f.read(), str(path))


def _parse_csv(text: str, name: str) -> tuple[Puzzle, ...]:
  reader = csv.reader(io.StringIO(text))
  header = next(reader, None)
  try:
    rank_col, numbers_col = header.index("Rank"), header.index("Puzzles")
  except (AttributeError, ValueError):
    raise ValueError(f"{name}, line 1: header needs 'Rank' and 'Puzzles' "
                     f"columns, got {header}") from None
  rate_col = header.index("Solved rate") if "Solved rate" in header else None
  puzzles = []
  for row in reader:
    where = f"{name}, line {reader.line_num}"
    if not row:
      continue
    if len(row) != len(header):
      raise ValueError(f"{where}: {len(row)} fields, expected {len(header)}")
    fields = row[numbers_col].split()
    if len(fields) != 4:
      raise ValueError(f"{where}: expected 4 numbers, got {row[numbers_col]!r}")
    try:
      numbers = tuple(int(x) for x in fields)
      rank = int(row[rank_col])
      rate = row[rate_col].strip() if rate_col is not None else ""
      solve_rate = float(rate.removesuffix("%")) / 100 if rate else None
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    if min(numbers) < 1:
      raise ValueError(f"{where}: numbers must be positive, got {numbers}")
    puzzles.append(Puzzle(numbers, rank, solve_rate))
  return tuple(puzzles)


def tot_csv_text(puzzles: Iterable[Sequence[int]]) -> str:
  """The text of a puzzle file `load_tot_csv` reads: each puzzle's numbers,
  ranked 1, 2, ... in order."""
  return "Rank,Puzzles\n" + "".join(
      f"{rank},{_join(numbers)}\n" for rank, numbers in enumerate(puzzles, 1))


@functools.cache
def _bundled() -> tuple[Puzzle, ...]:
  return load_tot_csv()


def _test_numbers() -> set[tuple[int, ...]]:
  return {p.numbers for p in _bundled() if p.rank in TEST_RANKS}


def splits(seed: int = 0, num_validation: int = 100) -> Splits:
  """Train / validation / test puzzles over 1..13.

  Test is the benchmark (ranks 901-1000 of the bundled list); validation is
  `num_validation` puzzles drawn with `seed` from the other ranks; train is
  every other solvable puzzle.
  """
  listed = {p.numbers: p for p in _bundled()}
  test = tuple(p for p in _bundled() if p.rank in TEST_RANKS)
  others = sorted((p for p in _bundled() if p.rank not in TEST_RANKS),
                  key=lambda p: p.rank)
  validation = tuple(sorted(random.Random(seed).sample(others, num_validation),
                            key=lambda p: p.rank))
  held_out = {p.numbers for p in test + validation}
  train = tuple(listed.get(p.numbers, p) for p in all_solvable_puzzles()
                if p.numbers not in held_out)
  return Splits(train=train, validation=validation, test=test)


# Exact search.


@functools.cache
def _values(numbers: tuple[int, ...]) -> frozenset[Fraction]:
  """Every value the sorted `numbers` can make, each used once."""
  if len(numbers) == 1:
    return frozenset({Fraction(numbers[0])})
  out = set()
  for left, right in _halves(numbers):
    for x, y in itertools.product(_values(left), _values(right)):
      out.update((x + y, x - y, y - x, x * y))
      if y:
        out.add(x / y)
      if x:
        out.add(y / x)
  return frozenset(out)


def _halves(numbers):
  """Each split of `numbers` into two non-empty parts, once."""
  rest = range(1, len(numbers))
  for r in range(len(numbers) - 1):
    for picked in itertools.combinations(rest, r):
      left = (0,) + picked
      yield (tuple(numbers[i] for i in left),
             tuple(n for i, n in enumerate(numbers) if i not in left))


def is_solvable(numbers: Sequence[int]) -> bool:
  """Whether `numbers` make 24 with + - * / and parentheses (exact)."""
  numbers = tuple(sorted(numbers))
  if len(numbers) == 1:
    return numbers[0] == TARGET
  for halves in _halves(numbers):
    small, big = sorted(halves, key=len)
    big_values = _values(big)
    for x in _values(small):
      # y such that x + y, x - y, y - x, x * y, x / y or y / x is the target.
      needed = [TARGET - x, x - TARGET, TARGET + x]
      if x:
        needed += [Fraction(TARGET) / x, x / TARGET, x * TARGET]
      if any(y in big_values for y in needed):
        return True
  return False


def all_solvable_puzzles(max_number: int = 13) -> tuple[Puzzle, ...]:
  """Every solvable multiset of four numbers in 1..max_number, ascending."""
  return tuple(
      Puzzle(c) for c in itertools.combinations_with_replacement(
          range(1, max_number + 1), 4) if is_solvable(c))


def _moves(state):
  """Integer moves from `state`, a list of (value, expression) pairs.

  Yields (step operands and result, next state); results that are not
  negative come first.
  """
  moves = []
  for i, j in itertools.permutations(range(len(state)), 2):
    (a, ea), (b, eb) = state[i], state[j]
    rest = [s for k, s in enumerate(state) if k not in (i, j)]
    if i < j:
      moves.append((a, "+", b, a + b, ea, eb, rest))
      moves.append((a, "*", b, a * b, ea, eb, rest))
    moves.append((a, "-", b, a - b, ea, eb, rest))
    if b and a % b == 0:
      moves.append((a, "/", b, a // b, ea, eb, rest))
  moves.sort(key=lambda m: m[3] < 0)
  for a, op, b, c, ea, eb, rest in moves:
    yield (a, op, b, c), rest + [(c, f"({ea}) {op} ({eb})")]


def _step_line(a, op, b, c, state) -> str:
  return f"{a} {op} {b} = {c} (left: {_join(sorted(v for v, _ in state))})"


def _answer_line(expression: str, value) -> str:
  return f"{ANSWER_MARKER} {_normalize(expression)} = {value}"


def solve(numbers: Sequence[int]) -> list[str] | None:
  """One solution: three step lines and the `Answer:` line.

  Returns:
    The lines, or None when no solution keeps every intermediate result an
    integer (that includes a few solvable puzzles, e.g. 3 3 8 8 = 8 / (3 - 8/3)).
  """

  lines = _finish(tuple((n, str(n)) for n in numbers))
  return None if lines is None else list(lines)


@functools.lru_cache(maxsize=4096)
def _finish(state: tuple[tuple[int, str], ...]) -> tuple[str, ...] | None:
  """The lines that win from `state` (value, expression pairs), or None.
  Cached (hence tuples): `completed_solutions` finishes from each puzzle's
  start often."""
  if len(state) == 1:
    value, expression = state[0]
    return (_answer_line(expression, value),) if value == TARGET else None
  for (a, op, b, c), child in _moves(state):
    tail = _finish(tuple(child))
    if tail is not None:
      return (_step_line(a, op, b, c, child),) + tail
  return None


def _random_play(numbers: Sequence[int], rng: random.Random):
  """`(random_solution lines, the states before and after each move)`."""
  state = [(n, str(n)) for n in numbers]
  lines, states = [], [state]
  while len(state) > 1:
    moves = [m for m in _moves(state) if m[0][3] >= 0]
    (a, op, b, c), state = rng.choice(moves)
    lines.append(_step_line(a, op, b, c, state))
    states.append(state)
  value, expression = state[0]
  return lines + [_answer_line(expression, value)], states


def random_solution(numbers: Sequence[int], rng: random.Random) -> list[str]:
  """Three random legal steps and the `Answer:` line of the expression they
  built, with its true value (rarely 24): what a policy that knows the
  syntax but not how to win writes."""
  return _random_play(numbers, rng)[0]


def random_game(numbers: Sequence[int], rng: random.Random
                ) -> tuple[list[str], list[list[int]]]:
  """A `random_solution` and the numbers left before each of its lines:
  `numbers` first, the last move's single result before the Answer line."""
  lines, states = _random_play(numbers, rng)
  return lines, [sorted(v for v, _ in state) for state in states]


def completed_solutions(numbers: Sequence[int], rng: random.Random
                        ) -> list[list[str]]:
  """A `random_solution` and, from each of its states before the last move
  (the four numbers included) from which 24 can still be made with integer
  steps, its steps so far followed by a winning finish (`solve` from there).

  Grown into one tree, these give every node on the random path a correct
  descendant whenever one exists, so the tree's inferred `m_k` and `r_k`
  (SPEC Eq. 1-2) are the exact reasoning distance and reachability.
  """
  lines, states = _random_play(numbers, rng)
  out = [lines]
  for k, state in enumerate(states[:-1]):
    if not is_solvable([v for v, _ in state]):  # cached; skips most
      continue
    finish = _finish(tuple(state))
    if finish is not None and lines[:k] + list(finish) not in out:
      out.append(lines[:k] + list(finish))
  return out


def _check_not_test(puzzles: Sequence[Puzzle]) -> None:
  leaked = {p.numbers for p in puzzles} & _test_numbers()
  if leaked:
    raise ValueError(f"test puzzles in the warm-start puzzles: "
                     f"{sorted(leaked)}")


def warmstart_corpus(puzzles: Iterable[Puzzle], num_examples: int,
                     seed: int) -> list[str]:
  """Format-only texts: question + `random_solution` of random puzzles.

  Every step is a legal move with a non-negative integer result; the answer is
  the expression the moves built, with its true value, which is rarely 24.
  The texts teach the syntax, not how to win.

  Raises:
    ValueError: if a puzzle is one of the test puzzles.
  """
  puzzles = list(puzzles)
  _check_not_test(puzzles)
  rng = random.Random(seed)
  texts = []
  for _ in range(num_examples):
    numbers = rng.choice(puzzles).numbers
    texts.append(format_text(numbers, random_solution(numbers, rng)))
  return texts


def random_solutions(puzzles: Sequence[Puzzle], per_puzzle: int,
                     seed: int, *, completed: bool = False
                     ) -> list[tuple[str, ...]]:
  """`per_puzzle` `random_solution` texts (steps after the question) of each
  puzzle: the warm-start samples the initial value model learns from. With
  `completed`, each comes with its `completed_solutions`.

  Raises:
    ValueError: if a puzzle is one of the test puzzles.
  """
  _check_not_test(puzzles)
  rng = random.Random(seed)
  text = lambda lines: "".join(line + "\n" for line in lines)
  if completed:
    return [tuple(text(lines) for _ in range(per_puzzle)
                  for lines in completed_solutions(p.numbers, rng))
            for p in puzzles]
  return [tuple(text(random_solution(p.numbers, rng))
                for _ in range(per_puzzle)) for p in puzzles]


# Checking model output.


def check_step(numbers_left: Sequence[int], step_line: str) -> list[int] | None:
  """Checks one step `a op b = c (left: ...)` against the remaining numbers.

  Returns:
    The numbers left after the step, sorted; None if `a` and `b` are not
    available, `c` is not the integer `a op b`, or the listed numbers are not
    what remains (in any order).
  """
  match = _STEP_RE.fullmatch(step_line)
  if match is None:
    return None
  a, op, b, c, listed = match.groups()
  a, b, c = int(a), int(b), int(c)
  remaining = list(numbers_left)
  for operand in (a, b):
    if operand not in remaining:
      return None
    remaining.remove(operand)
  if op == "/" and b == 0:
    return None
  if _OPS[op](Fraction(a), b) != c:
    return None
  left = sorted(int(x) for x in (listed or "").split())
  return left if left == sorted(remaining + [c]) else None


def _answer(text: str) -> tuple[str, list[str]] | None:
  """The expression on the first `Answer:` line and what follows each `=`."""
  for line in text.splitlines():
    line = line.strip()
    if line.startswith(ANSWER_MARKER):
      expression, *rhs = line.removeprefix(ANSWER_MARKER).split("=")
      return expression.strip(), [r.strip() for r in rhs]
  return None


def _parse(expression: str) -> ast.expr | None:
  """The whitelisted syntax tree of `expression`, or None."""
  if (len(expression) > _MAX_EXPRESSION_LEN
      or not _EXPRESSION_CHARS.fullmatch(expression)):
    return None
  try:
    tree = ast.parse(expression, mode="eval").body
  except SyntaxError:
    return None
  # The characters allowed leave integers as the only possible constants.
  if not all(isinstance(n, _ALLOWED_NODES) for n in ast.walk(tree)):
    return None
  return tree


def _evaluate(tree: ast.expr, leaves: list[int]) -> Fraction:
  if isinstance(tree, ast.Constant):
    leaves.append(tree.value)
    return Fraction(tree.value)
  return _AST_OPS[type(tree.op)](_evaluate(tree.left, leaves),
                                 _evaluate(tree.right, leaves))


def _normalize(expression: str) -> str:
  tree = _parse(expression)
  return " ".join(expression.split()) if tree is None else ast.unparse(tree)


def extract_answer(text: str) -> str | None:
  """The normalized expression on the `Answer:` line (for voting), or None."""
  answer = _answer(text)
  return None if answer is None else _normalize(answer[0])


def verify(numbers: Sequence[int], solution_text: str) -> bool:
  """Whether the `Answer:` expression uses exactly `numbers` and makes 24.

  The line may end with `= 24`, but with no other right-hand side.
  """
  answer = _answer(solution_text)
  if answer is None or answer[1] not in ([], [str(TARGET)]):
    return False
  tree = _parse(answer[0])
  if tree is None:
    return False
  leaves = []
  try:
    value = _evaluate(tree, leaves)
  except ZeroDivisionError:
    return False
  return value == TARGET and sorted(leaves) == sorted(numbers)


def _join(numbers: Iterable[int]) -> str:
  return " ".join(str(n) for n in numbers)
