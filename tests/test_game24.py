"""Game of 24: puzzle list, splits, exact verifier, step checker, corpora."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restmcts_jax.tasks import game24

SOLVABLE = game24.all_solvable_puzzles()
# Solvable puzzles whose solutions all need a fraction on the way.
FRACTION_ONLY = {(1, 3, 4, 6), (1, 4, 5, 6), (1, 5, 5, 5), (1, 6, 6, 8),
                 (1, 8, 12, 12), (2, 2, 11, 11), (2, 2, 13, 13), (2, 3, 5, 12),
                 (2, 4, 10, 10), (2, 5, 5, 10), (2, 7, 7, 10), (3, 3, 7, 7),
                 (3, 3, 8, 8), (4, 4, 7, 7), (5, 5, 7, 11), (5, 7, 7, 11)}
INTEGER_SOLVABLE = [p.numbers for p in SOLVABLE
                    if p.numbers not in FRACTION_ONLY]


def _steps_are_legal(numbers, text):
  """Checks every step line of `text` and returns the numbers left."""
  lines = text.splitlines()
  assert lines[0] == game24.question_text(numbers).strip()
  left = list(numbers)
  for line in lines[1:-1]:
    left = game24.check_step(left, line)
    assert left is not None, line
  assert lines[-1].startswith(game24.ANSWER_MARKER)
  return left


def test_solvable_puzzles_over_1_to_13_are_the_listed_1362():
  assert len(SOLVABLE) == 1362
  assert len(game24.all_solvable_puzzles(10)) == 566
  listed = game24.load_tot_csv()
  assert {p.numbers for p in SOLVABLE} == {p.numbers for p in listed}


def test_bundled_csv():
  puzzles = game24.load_tot_csv()
  assert len(puzzles) == 1362
  assert [p.rank for p in puzzles] == list(range(1, 1363))
  assert puzzles[0] == game24.Puzzle((1, 1, 4, 6), 1, pytest.approx(0.992))
  assert puzzles[-1].numbers == (2, 3, 5, 12)
  assert all(0 < p.solve_rate <= 1 for p in puzzles)


def test_csv_from_a_path(tmp_path):
  path = tmp_path / "ok.csv"
  path.write_text("Rank,Puzzles,Solved rate\n7,8 3 8 3,50%\n8,1 2 3 4,\n")
  assert game24.load_tot_csv(path) == (
      game24.Puzzle((3, 3, 8, 8), 7, 0.5), game24.Puzzle((1, 2, 3, 4), 8))


def test_tot_csv_text_reads_back(tmp_path):
  path = tmp_path / "two.csv"
  path.write_text(game24.tot_csv_text([(8, 3, 8, 3), (1, 2, 3, 4)]))
  assert game24.load_tot_csv(path) == (
      game24.Puzzle((3, 3, 8, 8), 1), game24.Puzzle((1, 2, 3, 4), 2))


@pytest.mark.parametrize("body, line", [
    ("", 1),
    ("Rank,Numbers\n1,1 2 3 4\n", 1),
    ("Rank,Puzzles\n1,1 1 4 6\n2,1 1 11\n", 3),
    ("Rank,Puzzles\n1,1 1 4 6 7\n", 2),
    ("Rank,Puzzles\n1,1 1 4 6\n2,1 1 x 11\n", 3),
    ("Rank,Puzzles\n1,1 1 4.5 6\n", 2),
    ("Rank,Puzzles\n1,1 1 4 0\n", 2),
    ("Rank,Puzzles\none,1 1 4 6\n", 2),
    ("Rank,Puzzles\n1,1 1 4 6,extra\n", 2),
    ("Rank,Puzzles,Solved rate\n1,1 1 4 6,lots\n", 2),
])
def test_bad_csv_names_file_and_line(tmp_path, body, line):
  path = tmp_path / "bad.csv"
  path.write_text(body)
  with pytest.raises(ValueError, match=f"bad.csv, line {line}:"):
    game24.load_tot_csv(path)


def test_splits_are_disjoint_and_cover_the_solvable_puzzles():
  splits = game24.splits(seed=0)
  assert len(splits.test) == 100 and len(splits.validation) == 100
  assert len(splits.train) == 1362 - 200
  assert [p.rank for p in splits.test] == list(range(901, 1001))
  assert all(p.rank not in game24.TEST_RANKS for p in splits.validation)
  train, val, test = ({p.numbers for p in part} for part in
                      (splits.train, splits.validation, splits.test))
  assert not train & test and not val & test and not train & val
  assert train | val | test == {p.numbers for p in SOLVABLE}
  assert game24.splits(seed=0) == splits
  other = game24.splits(seed=1, num_validation=50)
  assert other.test == splits.test and len(other.validation) == 50
  assert other.validation != splits.validation[:50]


@pytest.mark.parametrize("numbers, text, expected", [
    ((4, 4, 10, 13), "Answer: (13 - 9) * (10 - 4) = 24", False),
    ((4, 9, 10, 13), "Answer: (13 - 9) * (10 - 4) = 24", True),
    ((4, 9, 10, 13), "steps\nAnswer: (13-9)*(10-4)\n", True),
    ((4, 9, 10, 13), "  Answer:   ((13 - 9) * (10 - 4))  =  24 ", True),
    ((3, 3, 8, 8), "Answer: 8 / (3 - 8 / 3) = 24", True),
    ((4, 9, 10, 13), "Answer: (13 - 9) * (10 - 4) = 25", False),
    ((4, 9, 10, 13), "Answer: (13 - 9) * (10 - 4) = 24 = 24", False),
    ((4, 9, 10, 13), "Answer: 13 - 9 * 10 - 4 = 24", False),  # not 24
    ((4, 9, 10, 13), "Answer: (13 - 9) * (10 - 4) * 1 = 24", False),  # extra
    ((4, 9, 10, 13), "Answer: (13 - 9) * 6 = 24", False),  # missing
    ((1, 2, 3, 4), "Answer: 1 * 2 * 3 * 4", True),
    ((1, 2, 3, 4), "Answer: 2 * 2 * 3 * 2 = 24", False),  # reused numbers
    ((1, 2, 3, 4), "Answer: 4 * 3 * 2 / 1 - 0 = 24", False),
    ((1, 1, 4, 6), "Answer: 4 * 6 / (1 - 1) = 24", False),  # division by zero
    ((1, 1, 4, 6), "Answer: 4 * 6 * (1 / 1) = 24", True),
    ((1, 1, 4, 6), "Answer: -1 + 1 + 4 * 6 = 24", False),  # unary minus
    ((1, 1, 4, 6), "Answer: 4 * 6 * 1 ** 1 = 24", False),
    ((1, 1, 4, 6), "Answer: 4 * 6 * (1 // 1) = 24", False),
    ((1, 1, 4, 6), "Answer: 4.0 * 6 * 1 * 1 = 24", False),
    ((2, 4, 6, 12), "Answer: 0x2 * 12 * (6 - 4) / 2 = 24", False),
    ((2, 4, 6, 12), "Answer: 2 * 12 * (6 - 4) / 2 = 24", False),
    ((1, 1, 4, 6), "Answer: __import__('os').system('echo') = 24", False),
    ((1, 1, 4, 6), "Answer: (lambda: 24)() = 24", False),
    ((1, 1, 4, 6), "Answer: 4 * 6 * 1 * 1; 1 = 24", False),
    ((1, 1, 4, 6), "Answer: " + "(" * 90 + "4*6*1*1" + ")" * 90, True),
    ((1, 1, 4, 6), "Answer: " + "(" * 150 + "4*6*1*1" + ")" * 150, False),
    ((1, 1, 4, 6), "Answer: (4 * 6 * 1 * 1", False),
    ((1, 1, 4, 6), "Answer:", False),
    ((1, 1, 4, 6), "4 * 6 * 1 * 1 = 24", False),  # no marker
    ((1, 1, 4, 6), "", False),
])
def test_verify(numbers, text, expected):
  assert game24.verify(numbers, text) is expected


def test_the_first_answer_line_counts():
  assert not game24.verify((1, 2, 3, 4), "Answer: 1+2+3+4\nAnswer: 1*2*3*4")


def test_extract_answer():
  text = "Use 4 9 10 13 to make 24.\nAnswer: ((13-9) *(10 - 4))= 24\n"
  assert game24.extract_answer(text) == "(13 - 9) * (10 - 4)"
  assert game24.extract_answer("Answer: 1 +  x") == "1 + x"
  assert game24.extract_answer("Answer: 2 * 5 = 10") == "2 * 5"
  assert game24.extract_answer("no answer here") is None


@pytest.mark.parametrize("left, line, expected", [
    ([4, 9, 10, 13], "13 - 9 = 4 (left: 4 4 10)", [4, 4, 10]),
    ([4, 9, 10, 13], "13 - 9 = 4 (left: 10 4 4)", [4, 4, 10]),
    ([4, 9, 10, 13], "  13-9=4 (left:4 4 10)\n", [4, 4, 10]),
    ([4, 4, 10], "10 - 4 = 6 (left: 4 6)", [4, 6]),
    ([4, 6], "4 * 6 = 24 (left: 24)", [24]),
    ([3, 8], "8 / 3 = 2 (left: 2)", None),  # not exact
    ([3, 8], "8 / 3 = 8/3 (left: 8/3)", None),  # fractions are not steps
    ([4, 10], "4 - 10 = -6 (left: -6)", [-6]),
    ([-6, -4], "-6 * -4 = 24 (left: 24)", [24]),
    ([0, 5], "5 / 0 = 0 (left: 0)", None),
    ([4, 9, 10, 13], "13 - 9 = 5 (left: 4 5 10)", None),  # wrong result
    ([4, 9, 10, 13], "13 - 8 = 5 (left: 4 5 9 10)", None),  # 8 not there
    ([4, 9, 10, 13], "9 + 9 = 18 (left: 4 10 13 18)", None),  # 9 twice
    ([4, 9, 10, 13], "13 - 9 = 4 (left: 4 10)", None),  # wrong left
    ([4, 9, 10, 13], "13 - 9 = 4 (left: 4 4 10 13)", None),
    ([4, 9, 10, 13], "13 - 9 = 4", None),
    ([4, 9, 10, 13], "13 ^ 9 = 4 (left: 4 4 10)", None),
    ([4, 9, 10, 13], "Answer: (13 - 9) * (10 - 4) = 24", None),
    ([4, 9, 10, 13], "13 - 9 = 4 (left: " + "1" * 5000 + "x)", None),
])
def test_check_step(left, line, expected):
  assert game24.check_step(left, line) == expected


def test_solve_gives_legal_steps_and_a_verified_answer():
  for numbers in random.Random(0).sample(INTEGER_SOLVABLE, 50):
    steps = game24.solve(numbers)
    assert len(steps) == 4
    text = game24.format_text(numbers, steps)
    assert _steps_are_legal(numbers, text) == [24]
    assert game24.verify(numbers, text)
  assert game24.solve((1, 1, 1, 1)) is None
  assert game24.solve((3, 3, 8, 8)) is None
  assert not game24.is_solvable((1, 1, 1, 1))


def test_fraction_only_puzzles_are_solvable_without_integer_steps():
  unsolved = {p.numbers for p in SOLVABLE if game24.solve(p.numbers) is None}
  assert unsolved == FRACTION_ONLY


def test_warmstart_corpus_is_legal_but_mostly_wrong():
  train = game24.splits().train
  texts = game24.warmstart_corpus(train, 300, seed=0)
  assert len(texts) == 300
  assert texts == game24.warmstart_corpus(train, 300, seed=0)
  train_numbers = {p.numbers for p in train}
  num_correct = 0
  for text in texts:
    numbers = tuple(int(x) for x in text.split("\n")[0].split()[1:5])
    assert numbers in train_numbers
    (value,) = _steps_are_legal(numbers, text)
    assert text.endswith(f" = {value}\n") and len(text.splitlines()) == 5
    assert game24.extract_answer(text) is not None
    num_correct += game24.verify(numbers, text)
  assert num_correct < len(texts) // 4


def test_random_game_lists_the_numbers_left_before_each_line():
  rng = random.Random(3)
  for numbers in random.Random(1).sample(INTEGER_SOLVABLE, 30):
    lines, numbers_left = game24.random_game(numbers, rng)
    assert len(lines) == len(numbers_left) == 4
    assert numbers_left[0] == sorted(numbers)
    for k, line in enumerate(lines[:-1]):
      assert game24.check_step(numbers_left[k], line) == numbers_left[k + 1]
    (value,) = numbers_left[-1]
    assert lines[-1].endswith(f" = {value}")
    assert game24.verify(numbers, game24.format_text(numbers, lines)) == (
        value == 24)


def test_warmstart_corpus_refuses_test_puzzles():
  splits = game24.splits()
  with pytest.raises(ValueError, match="test puzzles"):
    game24.warmstart_corpus(splits.train + splits.test[:1], 10, seed=0)


def _tamper(numbers, data):
  i = data.draw(st.integers(0, 3))
  new = data.draw(st.integers(1, 13).filter(lambda n: n != numbers[i]))
  return tuple(sorted(numbers[:i] + (new,) + numbers[i + 1:]))


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(INTEGER_SOLVABLE), st.data())
def test_solution_verifies_only_for_its_own_numbers(numbers, data):
  text = game24.format_text(numbers, game24.solve(numbers))
  assert game24.verify(numbers, text)
  assert not game24.verify(_tamper(numbers, data), text)
