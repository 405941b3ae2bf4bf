"""TensorFlow-Datasets builders for the tasks, prepared as ArrayRecord.

    tfds_builders.prepare("restmcts_gsm8k", data_dir, manual_dir=...)
    records = tfds_builders.data_source("restmcts_gsm8k", "test", data_dir)
    problems = tfds_builders.to_problems("restmcts_gsm8k", records)

| builder           | splits                  | source                         |
| ----------------- | ----------------------- | ------------------------------ |
| `restmcts_game24` | train, validation, test | bundled Tree-of-Thoughts list  |
| `restmcts_gsm8k`  | train, test             | official download, manual_dir  |
| `restmcts_math`   | train, test             | manual_dir                     |

Neither preparing nor reading imports TensorFlow: examples are written as
ArrayRecord and read back through `tfds.data_source`. Records keep the source
order (`disable_shuffling`): record `i` of a split is problem `i` of its file,
so shuffle when sampling. Rows are parsed by the tasks' own loaders, so a
malformed line fails the preparation with an error naming its file and line.
"""

import abc
import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from restmcts_jax.tasks import game24
from restmcts_jax.tasks import gsm8k
from restmcts_jax.tasks import math_task
from restmcts_jax.tasks import registry

_GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/"
              "master/grade_school_math/data/{}.jsonl")


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A task's problems as text and numbers, in source order.

  Subclasses set `name`, `TASK` (the `registry` task they feed), `FEATURES`,
  `DESCRIPTION` and `HOMEPAGE`, and say how a record becomes a `Problem`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # Where tfds looks for `checksums.tsv`. Set here because tfds would derive
  # it with `importlib_resources`, which it installs only on Python < 3.9
  # (tensorflow/datasets#11212).
  code_path = epath.Path(__file__)
  TASK: str
  FEATURES: Mapping[str, Any]
  DESCRIPTION: str
  HOMEPAGE: str

  def _info(self) -> tfds.core.DatasetInfo:
    # `DatasetInfo` directly: `dataset_info_from_configs` wants metadata files
    # beside a builder module of its own.
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(self.FEATURES),
        homepage=self.HOMEPAGE, disable_shuffling=True)

  def _generate_examples(self, examples: Sequence[dict]):
    # Integer keys: with shuffling disabled, records are stored in key order.
    yield from enumerate(examples)

  @staticmethod
  @abc.abstractmethod
  def problem(record: Mapping[str, Any]) -> registry.Problem:
    """The `registry.Problem` of a record read back from the data source."""


class Game24(_TaskBuilder):
  """Game of 24 over 1..13, split as `game24.splits()` (validation seed 0)."""

  name = "restmcts_game24"
  TASK = "game24"
  FEATURES = {
      "question": tfds.features.Text(),
      "numbers": tfds.features.Tensor(shape=(4,), dtype=np.int32),
      "rank": np.int32,
      "solve_rate": np.float32,
  }
  DESCRIPTION = (
      "Game of 24 puzzles: every solvable multiset of four numbers in 1..13, "
      "ranked by human difficulty. Test is ranks 901-1000 of the "
      "Tree-of-Thoughts list; validation is 100 other puzzles drawn with seed "
      "0; train is the rest.")
  HOMEPAGE = "https://github.com/princeton-nlp/tree-of-thought-llm"

  def _split_generators(self, dl_manager):
    del dl_manager  # The puzzle list ships with the package.
    splits = game24.splits()
    return {split: self._generate_examples([self._example(p) for p in puzzles])
            for split, puzzles in (("train", splits.train),
                                   ("validation", splits.validation),
                                   ("test", splits.test))}

  @staticmethod
  def _example(puzzle: game24.Puzzle) -> dict:
    return {"question": game24.question_text(puzzle.numbers),
            "numbers": puzzle.numbers, "rank": puzzle.rank,
            "solve_rate": puzzle.solve_rate}

  @staticmethod
  def problem(record):
    numbers = tuple(int(n) for n in record["numbers"])
    return registry.Problem(game24.question_text(numbers), numbers)


class _JsonlBuilder(_TaskBuilder, skip_registration=True):
  """A task read from one JSONL file per split.

  Subclasses set `FILES` (split -> file name in the manual directory) and
  `URLS` (split -> official download; empty when there is none).
  """

  FILES: Mapping[str, str]
  URLS: Mapping[str, str] = {}

  def _split_generators(self, dl_manager):
    paths = self._manual_paths(dl_manager)
    if paths is None:
      paths = dl_manager.download(dict(self.URLS))
    # Parsed here rather than in the generator: a bad line fails before any
    # split is written.
    return {split: self._generate_examples(self._examples(path))
            for split, path in paths.items()}

  def _manual_paths(self, dl_manager) -> dict[str, os.PathLike] | None:
    """Split -> file of the manual directory; None to download instead.

    The files are downloaded only when the builder has URLs and the manual
    directory holds none of `FILES`; holding some of them is an error.
    """
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # How tfds says the directory is absent or empty.
      if self.URLS:
        return None
      raise
    paths = {split: manual_dir / file for split, file in self.FILES.items()}
    missing = [str(path) for path in paths.values() if not path.exists()]
    if self.URLS and len(missing) == len(paths):
      return None
    if missing:
      raise FileNotFoundError(f"{self.name}: missing {', '.join(missing)}.\n"
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return paths

  @abc.abstractmethod
  def _examples(self, path: os.PathLike) -> list[dict]:
    """The feature dicts of the problems in the JSONL file `path`."""


class Gsm8k(_JsonlBuilder):
  """GSM8K word problems, from the official JSONL files."""

  name = "restmcts_gsm8k"
  TASK = "gsm8k"
  FEATURES = {
      "question": tfds.features.Text(),
      "answer": tfds.features.Text(),  # The rationale, ending `#### <n>`.
      "final_answer": tfds.features.Text(),
  }
  DESCRIPTION = ("GSM8K (arXiv:2110.14168): grade-school math word problems "
                 "with a numeric final answer.")
  HOMEPAGE = "https://github.com/openai/grade-school-math"
  FILES = {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}
  URLS = {split: _GSM8K_URL.format(split) for split in ("train", "test")}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Optional; without these files the official ones are downloaded. To prepare
  offline, put `gsm8k_train.jsonl` and `gsm8k_test.jsonl` in the manual
  directory: the official `train.jsonl` and `test.jsonl` of
  https://github.com/openai/grade-school-math (grade_school_math/data/),
  renamed, or any JSONL with `question` and `answer` (ending `#### <number>`).
  """

  def _examples(self, path):
    return [{"question": e.question, "answer": e.answer,
             "final_answer": e.final_answer}
            for e in gsm8k.load_jsonl(path)]

  @staticmethod
  def problem(record):
    return registry.Problem(gsm8k.question_text(record["question"].decode()),
                            record["final_answer"].decode(),
                            gsm8k.steps_from_answer(record["answer"].decode()))


class Math(_JsonlBuilder):
  """MATH competition problems, from JSONL files in the manual directory."""

  name = "restmcts_math"
  TASK = "math"
  FEATURES = {
      "question": tfds.features.Text(),  # The `problem` field.
      "solution": tfds.features.Text(),
      "final_answer": tfds.features.Text(),  # The last `\boxed{}` content.
  }
  DESCRIPTION = ("MATH (arXiv:2103.03874): competition mathematics problems "
                 "with LaTeX solutions and a boxed final answer.")
  HOMEPAGE = "https://github.com/hendrycks/math"
  FILES = {"train": "math_train.jsonl", "test": "math_test.jsonl"}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put `math_train.jsonl` and `math_test.jsonl` in the manual directory, one
  problem a line with `problem` and `solution` (the answer in its last
  `\\boxed{...}`). MATH ships as one JSON file per problem
  (https://github.com/hendrycks/math); the PRM800K repository has it as JSONL
  (https://github.com/openai/prm800k, prm800k/math_splits/, whose test split is
  the 500-problem MATH500 subset).
  """

  def _examples(self, path):
    return [{"question": e.question, "solution": e.answer,
             "final_answer": e.final_answer}
            for e in math_task.load_jsonl(path)]

  @staticmethod
  def problem(record):
    solution = record["solution"].decode()
    return registry.Problem(
        math_task.question_text(record["question"].decode()),
        record["final_answer"].decode(),
        math_task.steps_from_solution(solution))


BUILDERS = {builder.name: builder for builder in (Game24, Gsm8k, Math)}


def _builder_class(name: str) -> type[_TaskBuilder]:
  if name not in BUILDERS:
    raise ValueError(f"unknown builder {name!r}; known: {sorted(BUILDERS)}")
  return BUILDERS[name]


@contextlib.contextmanager
def _scratch_tempdir():
  """Points `tempfile` at a folder removed on exit: TFDS makes a `tmp*tfds`
  folder for every builder of an unprepared dataset (for dataset info from
  its GCS bucket, which it does not read offline) and never removes it."""
  previous = tempfile.tempdir
  with tempfile.TemporaryDirectory() as scratch:
    tempfile.tempdir = scratch
    try:
      yield
    finally:
      tempfile.tempdir = previous


def prepare(name: str, data_dir: str | os.PathLike,
            manual_dir: str | os.PathLike | None = None
            ) -> tfds.core.DatasetBuilder:
  """Prepares builder `name` in `data_dir` as ArrayRecord; a no-op if done.

  Args:
    name: a key of `BUILDERS`.
    data_dir: where the prepared data goes (`<data_dir>/<name>/1.0.0/`).
    manual_dir: the files of the builder's `MANUAL_DOWNLOAD_INSTRUCTIONS`;
      with them nothing is downloaded. Default: `<data_dir>/downloads/manual`.

  Returns:
    The prepared builder.
  """
  with _scratch_tempdir():
    builder = _builder_class(name)(
        data_dir=os.fspath(data_dir),
        file_format=tfds.core.FileFormat.ARRAY_RECORD)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder


def data_source(name: str, split: str, data_dir: str | os.PathLike
                ) -> Sequence[dict[str, Any]]:
  """Random-access records of a prepared split (text features as bytes).

  Reads what `prepare` wrote; never prepares or downloads.
  """
  _builder_class(name)
  return tfds.data_source(name, split=split, data_dir=os.fspath(data_dir),
                          download=False)


def to_problems(name: str, records: Iterable[Mapping[str, Any]]
                ) -> list[registry.Problem]:
  """The `registry.Problem`s of builder `name`'s records, for its task
  (`registry.get_task(BUILDERS[name].TASK)`)."""
  builder = _builder_class(name)
  return [builder.problem(record) for record in records]
