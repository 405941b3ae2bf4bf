"""TFDS builders: offline preparation from local files, read-back through
`tfds.data_source`, conversion to problems, and no TensorFlow."""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap

import pytest
import tensorflow_datasets as tfds

from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry
from restmcts_jax.tasks import tfds_builders

SAMPLE = (pathlib.Path(__file__).resolve().parent / "data"
    / "gsm8k_train_sample.jsonl")
NUM_GSM8K_TRAIN = 250  # Of the sample's 300 rows; the rest are the test split.
MATH_TRAIN = [
    {"problem": "What is $1+1$?", "solution": "We add. $1+1=\\boxed{2}$."},
    {"problem": "Simplify $\\frac{2}{4}$.",
     "solution": "Halve both.\nSo $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Compute $\\sqrt{8}$.",
     "solution": "$\\sqrt{8} = \\sqrt{4 \\cdot 2} = \\boxed{2\\sqrt{2}}$."},
]
MATH_TEST = [
    {"problem": "What is $2 \\cdot 3$?", "solution": "It is $\\boxed{6}$."},
    {"problem": "Solve $x + 1 = 0$.", "solution": "So $x = \\boxed{-1}$."},
]
# builder -> (task, split -> manual file, feature -> field of the JSONL row).
JSONL_BUILDERS = {
    "restmcts_gsm8k": ("gsm8k", tfds_builders.Gsm8k.FILES,
                       {"question": "question", "answer": "answer"}),
    "restmcts_math": ("math", tfds_builders.Math.FILES,
                      {"question": "problem", "solution": "solution"}),
}


def _write_manual_files(directory: pathlib.Path) -> pathlib.Path:
  """The builders' manual files: the GSM8K sample split in two, and MATH_*."""
  lines = SAMPLE.read_text().splitlines(keepends=True)
  gsm8k_files, math_files = tfds_builders.Gsm8k.FILES, tfds_builders.Math.FILES
  (directory / gsm8k_files["train"]).write_text(
      "".join(lines[:NUM_GSM8K_TRAIN]))
  (directory / gsm8k_files["test"]).write_text(
      "".join(lines[NUM_GSM8K_TRAIN:]))
  for split, rows in (("train", MATH_TRAIN), ("test", MATH_TEST)):
    (directory / math_files[split]).write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
  return directory


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  return _write_manual_files(tmp_path_factory.mktemp("manual"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, manual_dir):
  directory = tmp_path_factory.mktemp("tfds")
  for name in tfds_builders.BUILDERS:
    tfds_builders.prepare(name, directory, manual_dir=manual_dir)
  return directory


def _rows(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text()
          .splitlines()]


def test_split_sizes(data_dir):
  splits = game24.splits()
  expected = {
      "restmcts_game24": {"train": len(splits.train),
                          "validation": len(splits.validation),
                          "test": len(splits.test)},
      "restmcts_gsm8k": {"train": NUM_GSM8K_TRAIN,
                         "test": 300 - NUM_GSM8K_TRAIN},
      "restmcts_math": {"train": len(MATH_TRAIN), "test": len(MATH_TEST)},
  }
  for name, sizes in expected.items():
    for split, size in sizes.items():
      assert len(tfds_builders.data_source(name, split, data_dir)) == size
  assert sum(expected["restmcts_game24"].values()) == 1362


def test_game24_matches_repo_splits(data_dir):
  splits = game24.splits()
  for split in ("train", "validation", "test"):
    puzzles = getattr(splits, split)
    records = tfds_builders.data_source("restmcts_game24", split, data_dir)
    assert [tuple(r["numbers"]) for r in records] == [
        p.numbers for p in puzzles]
    assert [int(r["rank"]) for r in records] == [p.rank for p in puzzles]
  records = tfds_builders.data_source("restmcts_game24", "test", data_dir)
  record, puzzle = records[0], splits.test[0]
  assert puzzle.rank == game24.TEST_RANKS[0]
  assert record["question"].decode() == game24.question_text(puzzle.numbers)
  assert record["solve_rate"] == pytest.approx(puzzle.solve_rate)
  assert tfds_builders.to_problems("restmcts_game24", records) == [
      registry.Problem(game24.question_text(p.numbers), p.numbers)
      for p in splits.test]


@pytest.mark.parametrize("name", sorted(JSONL_BUILDERS))
def test_jsonl_records_equal_source(data_dir, manual_dir, name):
  task, files, fields = JSONL_BUILDERS[name]
  for split, file in files.items():
    path = manual_dir / file
    records = tfds_builders.data_source(name, split, data_dir)
    for record, row in zip(records, _rows(path), strict=True):
      for feature, field in fields.items():
        assert record[feature].decode() == row[field]
    assert tfds_builders.to_problems(name, records) == list(
        registry.get_task(task).load(path))


def _solution(problem: registry.Problem) -> str | None:
  """The problem's reference solution; for game24, the solver's (None when
  it finds no integer-only one)."""
  if problem.steps:
    return "\n".join(problem.steps)
  steps = game24.solve(problem.reference)
  return None if steps is None else "\n".join(steps)


@pytest.mark.parametrize("name", sorted(tfds_builders.BUILDERS))
def test_problems_grade_with_task_verifier(data_dir, name):
  task = registry.get_task(tfds_builders.BUILDERS[name].TASK)
  records = tfds_builders.data_source(name, "test", data_dir)
  problems = tfds_builders.to_problems(name, records)[:20]
  graded = 0
  # Each problem's solution passes; its neighbour's fails.
  for problem, neighbour in zip(problems, problems[1:] + problems[:1]):
    solution, other = _solution(problem), _solution(neighbour)
    if solution is None or other is None:
      continue
    assert task.is_correct(solution, problem.reference)
    if neighbour.reference != problem.reference:
      assert not task.is_correct(other, problem.reference)
    graded += 1
  assert graded >= len(problems) // 2


@pytest.mark.parametrize("name, file, line", [
    ("restmcts_gsm8k", "gsm8k_train.jsonl", "{not json"),
    ("restmcts_math", "math_test.jsonl",
     json.dumps({"problem": "1+1?", "solution": "No box: 2."})),
])
def test_malformed_line_names_file_and_line(tmp_path, name, file, line):
  manual_dir = _write_manual_files(tmp_path)
  rows = (manual_dir / file).read_text().splitlines(keepends=True)
  rows[1] = line + "\n"
  (manual_dir / file).write_text("".join(rows))
  with pytest.raises(ValueError, match=re.escape(f"{file}:2: ")):
    tfds_builders.prepare(name, tmp_path / "tfds", manual_dir=manual_dir)


@pytest.mark.parametrize("name", sorted(JSONL_BUILDERS))
def test_incomplete_manual_dir_is_an_error(tmp_path, name):
  files = JSONL_BUILDERS[name][1]
  (tmp_path / files["train"]).write_text(SAMPLE.read_text())
  with pytest.raises(FileNotFoundError, match=files["test"]):
    tfds_builders.prepare(name, tmp_path / "tfds", manual_dir=tmp_path)


def test_gsm8k_downloads_the_official_files(tmp_path, manual_dir,
                                            monkeypatch):
  requested = {}

  def download(self, urls):  # The download manager, offline.
    del self
    requested.update(urls)
    return {split: manual_dir / tfds_builders.Gsm8k.FILES[split]
            for split in urls}

  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  tfds_builders.prepare("restmcts_gsm8k", tmp_path)
  assert requested == {
      split: ("https://raw.githubusercontent.com/openai/grade-school-math/"
              f"master/grade_school_math/data/{split}.jsonl")
      for split in ("train", "test")}
  assert len(tfds_builders.data_source("restmcts_gsm8k", "test",
                                       tmp_path)) == 300 - NUM_GSM8K_TRAIN


def test_prepare_and_read_without_tensorflow_or_network(tmp_path, manual_dir):
  # A stand-in `tensorflow` package is importable, so an import would land in
  # `sys.modules` rather than fail quietly; sockets refuse to connect.
  (tmp_path / "fake" / "tensorflow").mkdir(parents=True)
  (tmp_path / "fake" / "tensorflow" / "__init__.py").touch()
  script = textwrap.dedent("""
      import socket
      import sys

      def refuse(*args, **kwargs):
        raise OSError("network access while preparing offline")

      socket.socket.connect = refuse
      socket.create_connection = refuse
      socket.getaddrinfo = refuse

      from restmcts_jax.tasks import tfds_builders

      data_dir, manual_dir = sys.argv[1:]
      for name in tfds_builders.BUILDERS:
        tfds_builders.prepare(name, data_dir, manual_dir=manual_dir)
        records = tfds_builders.data_source(name, "test", data_dir)
        assert tfds_builders.to_problems(name, records)
      assert "tensorflow" not in sys.modules, "tensorflow was imported"
      """)
  python_path = [str(tmp_path / "fake"), os.environ.get("PYTHONPATH")]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, python_path)))
  result = subprocess.run(
      [sys.executable, "-c", script, str(tmp_path / "tfds"), str(manual_dir)],
      env=env, cwd=pathlib.Path(__file__).parents[1], capture_output=True,
      text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]


def test_prepare_leaves_no_temporary_folders(tmp_path, monkeypatch):
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  tfds_builders.prepare("restmcts_game24", tmp_path / "data")
  assert list(temp.iterdir()) == []
  assert tempfile.gettempdir() == str(temp)


def test_unknown_builder():
  with pytest.raises(ValueError, match="restmcts_game24"):
    tfds_builders.prepare("game24", "/nonexistent")
