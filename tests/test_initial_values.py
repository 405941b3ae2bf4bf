"""`D_V0`: whole solutions arranged as trees, labelled by SPEC Eq. 1–2."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restmcts_jax.rewards import initial_values
from restmcts_jax.search import tree as tree_lib
from restmcts_jax.tasks import game24

NEWLINE = ord("\n")


def _records(questions, solutions, references, is_correct, **kwargs):
  """Character-level tokenizer: a step is one line."""
  kwargs = dict(question_width=8, max_step_len=4, max_depth=4) | kwargs
  rows, targets, depths = initial_values.solution_records(
      questions, solutions, references, encode=lambda t: list(map(ord, t)),
      decode=lambda ids: "".join(map(chr, ids)), is_correct=is_correct,
      delimiter_ids=[NEWLINE], **kwargs)
  texts = ["".join(map(chr, r)) for r in rows]
  # A record's depth: the lines after the question's.
  assert depths == [t.count("\n") - 1 for t in texts]
  return dict(zip(texts, targets))


def test_spec_worked_example():
  """SPEC: a 4-step correct path gets 0.25 .. 1.0; a wrong branch leaving the
  depth-2 node (v = 0.5, m = 2) gets 1/3, then 1/9."""
  records = _records(["Q\n"], [["a\nb\nc\nd\n", "a\nb\nx\ny\n"]], [None],
                     lambda text, _: text.endswith("d\n"))
  assert records.keys() == {"Q\na\n", "Q\na\nb\n", "Q\na\nb\nc\n",
                            "Q\na\nb\nc\nd\n", "Q\na\nb\nx\n",
                            "Q\na\nb\nx\ny\n"}
  expected = {"Q\na\n": 0.25, "Q\na\nb\n": 0.5, "Q\na\nb\nc\n": 0.75,
              "Q\na\nb\nc\nd\n": 1.0, "Q\na\nb\nx\n": 1 / 3,
              "Q\na\nb\nx\ny\n": 1 / 9}
  for row, v in expected.items():
    assert records[row] == pytest.approx(v, abs=1e-6), row


def test_questions_without_a_correct_solution_give_no_records():
  records = _records(["Q\n", "R\n"], [["a\nb\n", "c\nd\n"], ["e\nf\n"]],
                     ["never", "f"], lambda text, ref: text.endswith(ref + "\n"))
  # Only R's single correct path is labelled: values 1/2, 1.
  assert records == pytest.approx({"R\ne\n": 0.5, "R\ne\nf\n": 1.0})


def test_duplicates_merge_and_unsearchable_solutions_are_left_out():
  same = _records(["Q\n"], [["a\nb\n"]], [None], lambda *_: True)
  records = _records(
      ["Q\n"], [["a\nb\n", "a\nb\n", "toolong\nb\n", "a\nb\nc\nd\ne\n"]],
      [None], lambda *_: True)
  assert records == same


def test_records_do_not_depend_on_the_chunking():
  rng = np.random.default_rng(0)
  questions = [f"Q{i}\n" for i in range(7)]
  solutions = [["".join(f"{rng.integers(3)}\n" for _ in range(3))
                for _ in range(5)] for _ in questions]
  correct = lambda text, _: text.endswith("2\n")
  one = _records(questions, solutions, [None] * 7, correct, chunk=1)
  assert one and one == _records(questions, solutions, [None] * 7, correct,
                                 chunk=3)


paths_strategy = st.lists(  # per tree, paths of 1-3 steps over 3 step texts
    st.lists(st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=2),
                      min_size=3, max_size=3), min_size=0, max_size=5),
    min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(paths_strategy)
def test_from_paths_builds_a_trie(paths):
  questions = np.arange(len(paths))[:, None] + 10
  tree, ends = tree_lib.from_paths(questions, np.ones(len(paths)), paths,
                                   max_step_len=2)
  padded, padded_ends = tree_lib.from_paths(
      questions, np.ones(len(paths)), paths, max_step_len=2,
      bucket_shapes=True)
  # Bucketed: N and K rounded up to powers of two, the same nodes in front.
  (_, n_all), (_, n_padded) = tree.parent.shape, padded.parent.shape
  k_all, k_padded = tree.children.shape[-1], padded.children.shape[-1]
  assert n_padded == 1 << (n_all - 1).bit_length() and n_padded < 2 * n_all
  assert k_padded == 1 << (k_all - 1).bit_length() and k_padded < 2 * k_all
  assert padded_ends == ends
  np.testing.assert_array_equal(padded.num_nodes, tree.num_nodes)
  np.testing.assert_array_equal(padded.children[:, :n_all, :k_all],
                                tree.children)
  assert np.all(padded.children[:, n_all:] == tree_lib.NO_CHILD)
  assert np.all(padded.children[:, :, k_all:] == tree_lib.NO_CHILD)
  for field in ("parent", "depth", "step_tokens", "step_len", "final"):
    np.testing.assert_array_equal(getattr(padded, field)[:, :n_all],
                                  getattr(tree, field), err_msg=field)
  for t, tree_paths in enumerate(paths):
    n = int(tree.num_nodes[t])
    distinct_prefixes = {tuple(map(tuple, p[:k])) for p in tree_paths
                         for k in range(1, len(p) + 1)}
    assert n == 1 + len(distinct_prefixes)
    for i in range(1, n):
      parent = tree.parent[t, i]
      assert tree.depth[t, i] == tree.depth[t, parent] + 1
      assert i in tree.children[t, parent]
    for path, end in zip(tree_paths, ends[t]):
      assert tree.final[t, end]
      node, steps = end, []
      while node != tree_lib.ROOT_INDEX:  # walk up: the steps of the path
        steps.append(tree.step_tokens[t, node, :tree.step_len[t, node]]
                     .tolist())
        node = tree.parent[t, node]
      assert steps[::-1] == path


def test_game24_random_solutions_reach_24_sometimes_and_give_records():
  """The default's D_V0 source: legal moves, a few percent correct, and the
  solved puzzles' trees give records with the full range of values."""
  puzzles = game24.splits().train[:60]
  solutions = game24.random_solutions(puzzles, 16, seed=0)
  assert solutions == game24.random_solutions(puzzles, 16, seed=0)
  texts = [game24.question_text(p.numbers) + s
           for p, sols in zip(puzzles, solutions) for s in sols]
  correct = [game24.verify(p.numbers, game24.question_text(p.numbers) + s)
             for p, sols in zip(puzzles, solutions) for s in sols]
  assert all(len(t.strip().split("\n")) == 5 for t in texts)
  assert 0.002 < np.mean(correct) < 0.1
  rows, targets, _ = initial_values.solution_records(
      [game24.question_text(p.numbers) for p in puzzles], solutions,
      [p.numbers for p in puzzles], encode=lambda t: list(map(ord, t)),
      decode=lambda ids: "".join(map(chr, ids)),
      is_correct=lambda text, numbers: game24.verify(numbers, text),
      delimiter_ids=[NEWLINE], question_width=32, max_step_len=64,
      max_depth=4)
  targets = np.asarray(targets)
  assert len(rows) > 0 and targets.max() == pytest.approx(1.0)
  assert (targets == 0).mean() > 0.5  # most moves lead nowhere
  assert np.all((targets >= 0) & (targets <= 1))


def test_game24_random_solutions_refuse_test_puzzles():
  with pytest.raises(ValueError, match="test puzzles"):
    game24.random_solutions(game24.splits().test[:1], 2, seed=0)


def test_game24_completed_solutions_give_the_exact_values():
  """Random solutions completed by the solver wherever 24 is still in reach:
  the tree-inferred label of every node is then exact (Eq. 1-2 with the true
  reasoning distance): `k / 4` at depth k iff 24 can still be made with
  integer steps from the numbers left, less otherwise."""
  puzzles = game24.splits().train[::40][:24]
  solutions = game24.random_solutions(puzzles, 8, seed=1, completed=True)
  assert solutions == game24.random_solutions(puzzles, 8, seed=1,
                                              completed=True)
  plain = game24.random_solutions(puzzles, 8, seed=1)
  assert sum(map(len, solutions)) > sum(map(len, plain))
  questions = [game24.question_text(p.numbers) for p in puzzles]
  for q, p, sols in zip(questions, puzzles, solutions):
    assert any(game24.verify(p.numbers, q + s) for s in sols)
  records = _records(questions, solutions, [p.numbers for p in puzzles],
                     lambda text, numbers: game24.verify(numbers, text),
                     question_width=32, max_step_len=64)
  on_path = off_path = 0
  for text, target in records.items():
    question, *lines = text.strip("\n").split("\n")
    numbers = list(map(int, question.split()[1:5]))
    depth = len(lines)
    if lines[-1].startswith(game24.ANSWER_MARKER):
      reachable = game24.verify(numbers, text)
    else:
      left = numbers
      for line in lines:
        left = game24.check_step(left, line)
      reachable = game24.solve(left) is not None
    if reachable:
      assert target == pytest.approx(depth / 4), text
      on_path += 1
    else:
      assert target < depth / 4 - 1e-6, text
      off_path += 1
  assert on_path > 50 and off_path > 50
