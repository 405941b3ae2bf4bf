"""bench/oracle_value.py: the exact Game of 24 value on hand-checked partial
solutions, and its `ValueModel` interface scoring tokens under jit and in an
MCTS* search."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from restmcts_jax import evaluation
from restmcts_jax import sampling
from restmcts_jax.models import transformer as tl
from restmcts_jax.search import mcts_star
from restmcts_jax.search import tree as tree_lib
from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry
from restmcts_jax.tokenizer import SentencePieceTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_oracle_value", ROOT / "bench" / "oracle_value.py")
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)

QUESTION = game24.question_text((4, 9, 10, 13))
SOLUTION = ["9 + 10 = 19 (left: 4 13 19)", "19 - 13 = 6 (left: 4 6)",
            "4 * 6 = 24 (left: 24)", "Answer: 4 * (9 + 10 - 13) = 24"]


def test_exact_value_of_hand_checked_partial_solutions():
  assert game24.solve((4, 9, 10, 13)) == SOLUTION
  value = lambda *steps: oracle.exact_value(
      QUESTION + "".join(s + "\n" for s in steps), 4)
  # Eq. 1-2's labels along a correct path.
  assert [value(*SOLUTION[:k]) for k in range(1, 5)] == [0.25, 0.5, 0.75, 1.0]
  assert value("4 + 9 = 14 (left: 10 13 14)") == 0.0  # wrong arithmetic
  assert value("4 + 8 = 12 (left: 9 10 12 13)") == 0.0  # 8 is not there
  # Legal, but 24 is out of reach: 13 - 9 = 4, 4 * 4 = 16, then 10 and 16.
  assert value("13 - 9 = 4 (left: 4 4 10)", "4 * 4 = 16 (left: 10 16)") == 0.0
  assert not game24.is_solvable((10, 16))
  assert value("13 - 9 = 4 (left: 4 4 10)") == 0.25
  assert value("Answer: 4 + 9 + 10 + 13 = 24") == 0.0  # = 36
  assert value(*SOLUTION[:1], "Answer: (13 - 9) * (10 - 4) = 24") == 1.0
  assert oracle.exact_value("Use", 4) == 0.0  # a padding row


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  texts = game24.warmstart_corpus(game24.splits().train[:200], 300, seed=0)
  texts.append(QUESTION + "".join(s + "\n" for s in SOLUTION))
  return SentencePieceTokenizer.train(
      texts, tmp_path_factory.mktemp("sp") / "sp", vocab_size=400)


def _continuations_and_whole_rows(value, tokenizer):
  """`value`'s scores of two continuations each of the bare question and of
  the question + one step, asserted equal to its scores of the same rows
  whole (under jit); returns them."""
  prefixes = [QUESTION, QUESTION + SOLUTION[0] + "\n"]
  steps = [SOLUTION[0] + "\n", "4 + 9 = 14 (left: 10 13 14)\n",
           SOLUTION[1] + "\n", "Answer: 4 + 9 + 10 + 13 = 24\n"]
  prefix, prefix_len = evaluation.encode_rows(tokenizer, prefixes, 24)
  step, step_len = evaluation.encode_rows(tokenizer, steps, 24)
  scored = jax.jit(lambda *a: value.score_continuations(*a, 2))(
      prefix, prefix_len, step, step_len)
  whole, whole_len = evaluation.encode_rows(
      tokenizer, [prefixes[i // 2] + s for i, s in enumerate(steps)], 48)
  np.testing.assert_array_equal(jax.jit(value)(whole, whole_len), scored)
  return scored


def test_continuations_score_like_whole_rows_under_jit(tokenizer):
  value = oracle.ExactValue(tokenizer, max_depth=4)
  np.testing.assert_array_equal(
      _continuations_and_whole_rows(value, tokenizer), [0.25, 0.0, 0.5, 0.0])


class _Constant(nnx.Module):
  """A value model that scores every row `value`."""

  def __init__(self, value):
    self.value = value

  def __call__(self, tokens, lengths):
    return jax.numpy.full(lengths.shape, self.value)

  def score_continuations(self, prefix, lengths, steps, step_lengths,
                          num_samples):
    return jax.numpy.full(step_lengths.shape, self.value)


def test_the_split_value_asks_first_about_first_steps_only(tokenizer):
  value = oracle.FirstStepSplitValue(
      oracle.ExactValue(tokenizer, max_depth=4), _Constant(-1.0), tokenizer)
  # The bare question's continuations are first steps: the exact value's
  # 0.25 (winnable) and 0 (lost); the deeper ones the other model's.
  np.testing.assert_array_equal(
      _continuations_and_whole_rows(value, tokenizer), [0.25, 0.0, -1.0, -1.0])


def test_mcts_searches_with_the_exact_value(tokenizer):
  """An untrained policy searched with the exact value, through the
  evaluation's MCTS* without node caches: every node's prior value is one of
  the exact levels."""
  config = tl.TransformerConfig(
      vocab_size=tokenizer.vocab_size, embed_dim=32, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  policy = tl.Transformer(config, rngs=nnx.Rngs(0))
  sampler_config = sampling.SamplerConfig(
      max_step_len=24, temperature=1.0,
      stop_token_ids=tokenizer.step_delimiter_ids(),
      eos_token_id=tokenizer.eos_id,
      answer_marker_ids=tuple(tokenizer.encode("Answer")))
  context = evaluation.EvalContext(
      tokenizer=tokenizer, task=registry.get_task("game24"),
      sampler_config=sampler_config,
      search_config=mcts_star.MCTSConfig(num_iterations=3, branch=2,
                                         max_depth=4, max_step_len=24),
      max_depth=4, question_width=16, cache_nodes=False)
  puzzles = [(4, 9, 10, 13), (1, 2, 3, 4)]
  problems = [registry.Problem(game24.question_text(p), p) for p in puzzles]
  result, search = evaluation.run_method(
      "mcts", 2, (policy, oracle.ExactValue(tokenizer, 4)), context,
      problems, jax.random.key(0), greedy_tokens=40.0)
  assert result.accuracy == 0.0  # an untrained policy does not solve them
  tree = search.tree
  used = np.asarray(tree.used)
  assert np.all(np.asarray(tree.num_nodes) >= 3)
  assert set(np.asarray(tree.prior_value)[used].tolist()) <= {
      0.0, 0.25, 0.5, 0.75, 1.0}


def test_tree_statistics_of_hand_built_trees(tokenizer):
  """Tree 0: two winnable first moves, the second followed by a lost one
  (expanded twice) and a final answer. Tree 1: one lost first move,
  expanded once. Expansions: tree 0 root, 2 and 3 twice; tree 1 root, 1."""
  lost_after_13_9 = "4 * 4 = 16 (left: 10 16)\n"
  lost_first_move = "4 + 9 = 13 (left: 10 13 13)\n"
  steps = {0: [[SOLUTION[0] + "\n", "13 - 9 = 4 (left: 4 4 10)\n"],
               [lost_after_13_9, "Answer: 4 * (9 + 10 - 13) = 24\n"]],
           1: [[lost_first_move, lost_first_move], ["", ""]]}
  question, question_len = evaluation.encode_rows(tokenizer, [QUESTION] * 2,
                                                  16)
  t = tree_lib.init_tree(jax.numpy.asarray(question),
                         jax.numpy.asarray(question_len), num_slots=6,
                         branching=2, max_step_len=24)
  for level, parent in enumerate([[0, 0], [2, 1]]):
    rows = [steps[b][level] for b in range(2)]
    tokens, lengths = evaluation.encode_rows(
        tokenizer, [s for r in rows for s in r], 24)
    t, _ = tree_lib.add_children(
        t, jax.numpy.asarray(parent), tokens.reshape(2, 2, 24),
        lengths.reshape(2, 2), np.zeros((2, 2), np.float32),
        np.array([[False, level == 1], [False, False]]),
        np.array([[True, True], [level == 0, False]]))
  # Tree 0 is root 0, first moves 1 and 2, then 3 (lost) and 4 (final)
  # under 2; tree 1 is root 0 and first move 1 (its duplicate merged).
  np.testing.assert_array_equal(t.num_nodes, [5, 2])
  expansions = np.zeros((2, 6), np.int32)
  expansions[0, [0, 2, 3]] = [1, 1, 2]
  expansions[1, [0, 1]] = 1
  zeros = np.zeros(2, np.int32)
  result = mcts_star.SearchResult(
      tree=t, expansions=expansions, answer_node=zeros,
      answer_is_rollout=zeros > 0,
      best_rollout=mcts_star.Rollout.none(
          2, mcts_star.MCTSConfig(max_step_len=24)),
      passed_gate=zeros > 0, iterations=zeros, policy_tokens=zeros,
      value_tokens=zeros)
  stats = oracle.tree_statistics(result, tokenizer, max_depth=4)
  assert stats == {"first_moves": 1.5, "no_winnable": 0.5,
                   "lost_expansions": 3 / 6}


def test_search_overrides_parse_and_name_unknown_keys():
  section = ("branch", "exploration", "rollout_answers")
  assert oracle.parse_overrides(
      "branch=2, exploration=0.25,rollout_answers=false", section) == {
          "branch": 2, "exploration": 0.25, "rollout_answers": False}
  assert oracle.parse_overrides("", section) == {}
  with pytest.raises(ValueError, match="'width=2'.*branch, exploration"):
    oracle.parse_overrides("width=2", section)
  with pytest.raises(ValueError, match="'branch'"):
    oracle.parse_overrides("branch", section)
