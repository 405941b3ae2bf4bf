"""bench/value_ranking.py: its AUC against hand-counted pairs, and the exact
truth of the random positions it scores."""

import importlib.util
import pathlib

import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from configs import tiny
from restmcts_jax import experiment
from restmcts_jax import selftrain
from restmcts_jax.models import transformer as transformer_lib
from restmcts_jax.models import value_head
from restmcts_jax.tasks import game24

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_value_ranking", ROOT / "bench" / "value_ranking.py")
ranking = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ranking)


def test_auc_counts_pairs_and_half_ties():
  scores = np.array([0.9, 0.5, 0.5, 0.1, 0.3])
  positive = np.array([True, True, False, False, True])
  # Pairs (winnable, lost): 0.9 beats 0.5 and 0.1; 0.5 ties 0.5, beats 0.1;
  # 0.3 loses to 0.5, beats 0.1: (2 + 1.5 + 1) / 6.
  assert ranking.auc(scores, positive) == 4.5 / 6
  assert ranking.auc(scores, np.ones(5, bool)) != ranking.auc(
      scores, np.ones(5, bool))  # nan: one class only


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=30), st.data())
def test_auc_matches_the_pair_count(scores, data):
  positive = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores),
                                         max_size=len(scores))))
  scores = np.array(scores)
  pos, neg = scores[positive], scores[~positive]
  if not len(pos) or not len(neg):
    return
  pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
  assert np.isclose(ranking.auc(scores, positive), np.mean(pairs))


def test_sampled_solutions_give_every_step_prefix_exactly_labelled():
  question = game24.question_text((4, 9, 10, 13))
  won = ["9 + 10 = 19 (left: 4 13 19)", "19 - 13 = 6 (left: 4 6)",
         "4 * 6 = 24 (left: 24)", "Answer: 4 * (9 + 10 - 13) = 24"]
  wrong_sum = ["4 + 9 = 14 (left: 10 13 14)", "Answer: 4 + 9 + 10 + 13 = 24"]
  positions = ranking.solution_prefixes(
      [question + "\n".join(won) + "\n", question + "\n".join(wrong_sum)],
      max_depth=4)
  assert positions.texts[1] == question + won[0] + "\n" + won[1] + "\n"
  assert positions.texts[5] == question + "".join(s + "\n" for s in wrong_sum)
  np.testing.assert_array_equal(positions.depth, [1, 2, 3, 4, 1, 2])
  np.testing.assert_array_equal(positions.winnable,
                                [True] * 4 + [False] * 2)


def test_random_positions_are_labelled_exactly():
  puzzles = game24.splits().validation[:5]
  positions = ranking.random_positions(puzzles, per_puzzle=3, seed=0)
  assert len(positions.texts) == 5 * 3 * 4  # 3 moves + the Answer line
  np.testing.assert_array_equal(positions.depth, [1, 2, 3, 4] * 15)
  for text, depth, won in zip(positions.texts, positions.depth,
                              positions.winnable):
    question, *steps = text.rstrip("\n").split("\n")
    numbers = [int(n) for n in question.split()[1:5]]
    assert len(steps) == depth
    if depth == 4:
      assert won == game24.verify(numbers, text)
      continue
    left = numbers
    for step in steps:
      left = game24.check_step(left, step)
    assert won == game24.is_solvable(left)
  # The first move keeps a solvable puzzle solvable only sometimes.
  assert 0 < positions.winnable[positions.depth == 1].mean() < 1



def test_value_targets_rank_against_the_exact_values(tmp_path):
  config = tiny.get_config()
  data = experiment.load_data(config)
  tokenizer = experiment.tokenizer_for(config, tmp_path, data)
  question = game24.question_text((4, 9, 10, 13))
  won = question + "13 - 9 = 4 (left: 4 4 10)\n"  # (10 - 4) * 4
  lost = question + "4 + 9 = 13 (left: 10 13 13)\n"
  deeper = won + "10 - 4 = 6 (left: 4 6)\n"  # 4 * 6
  trees = selftrain.Buffers(
      value_rows=[tokenizer.encode(t) for t in (won, lost, won, deeper)],
      value_targets=[0.1, 0.3, 0.5, 0.5])
  initial_rows, initial_targets, _ = experiment.initial_value_records(
      config, data, tokenizer)
  rows = ranking.target_rankings(trees, (initial_rows, initial_targets),
                                 tokenizer, config.max_depth, count=200,
                                 seed=0)
  (trees_name, (targets, positions)), (initial_name, initial) = rows.items()
  assert trees_name == "trees' D_V (4)"
  np.testing.assert_array_equal(targets, [0.1, 0.3, 0.5, 0.5])
  np.testing.assert_array_equal(positions.depth, [1, 1, 1, 2])
  np.testing.assert_array_equal(positions.winnable, [True, False, True, True])
  # Winnable 0.1 and 0.5 against lost 0.3: one pair of two ranked right.
  assert ranking.aucs_by_depth(targets, positions)[1] == 0.5
  # The default D_V0 labels from complete solutions: exact at every depth.
  assert initial_name == f"D_V0 (200 of {len(initial_rows)})"
  assert all(auc == 1.0 for auc in ranking.aucs_by_depth(*initial).values())


def test_variants_parse_and_start_where_they_say():
  (name, settings), = ranking.parse_variants(
      "wide:steps=10,start=scratch,embed_dim=16,mlp_dim=48")
  assert name == "wide" and settings["steps"] == 10
  assert settings["embed_dim"] == 16 and settings["num_layers"] == 0
  with pytest.raises(ValueError, match="start=nowhere"):
    ranking.parse_variants("x:start=nowhere")
  with pytest.raises(ValueError, match="expected key=value"):
    ranking.parse_variants("x:width=3")
  policy = transformer_lib.Transformer(transformer_lib.TransformerConfig(
      vocab_size=40, embed_dim=8, num_layers=1, num_heads=2, num_kv_heads=1,
      head_dim=4, mlp_dim=16), rngs=nnx.Rngs(0))
  value = value_head.make_value_model(policy, share_backbone=False,
                                      rngs=nnx.Rngs(1))
  assert ranking.start_model(settings | {"start": "checkpoint"}, policy,
                             value, seed=0) is value
  fresh = ranking.start_model(settings | {"start": "policy"}, policy, value,
                              seed=0)
  np.testing.assert_array_equal(fresh.backbone.embedding[...],
                                policy.embedding[...])
  wide = ranking.start_model(settings, policy, value, seed=0).backbone
  assert (wide.config.embed_dim, wide.config.mlp_dim) == (16, 48)
  assert wide.config.num_layers == 1 and wide.config.vocab_size == 40


def test_depth_heads_start_as_the_base_model_and_read_steps_from_newlines():
  policy = transformer_lib.Transformer(transformer_lib.TransformerConfig(
      vocab_size=40, embed_dim=8, num_layers=1, num_heads=2, num_kv_heads=1,
      head_dim=4, mlp_dim=16), rngs=nnx.Rngs(0))
  base = value_head.make_value_model(policy, share_backbone=False,
                                     rngs=nnx.Rngs(1))
  base.head.kernel[...] = np.linspace(-1, 1, 8, dtype=np.float32)
  base.head.bias[...] = np.float32(0.3)
  newline = 3
  # Question line, then 0 / 2 / 5 steps (clipped to the last of 5 heads);
  # the second row's padding holds newlines that must not count (they would
  # read 4 steps).
  tokens = np.array([[7, 8, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                     [7, 3, 9, 9, 3, 9, 3, 3, 3, 0, 0, 0],
                     [7, 3, 9, 3, 9, 3, 9, 3, 9, 3, 9, 3]], np.int32)
  lengths = np.array([3, 7, 10], np.int32)
  heads = ranking.DepthHeads(base, newline, num_depths=5)
  np.testing.assert_array_equal(heads.depth(tokens, lengths), [0, 2, 4])
  np.testing.assert_allclose(heads(tokens, lengths), base(tokens, lengths),
                             rtol=1e-6)
  heads.bias[...] = np.array([0, 0, 5, 0, -5], np.float32)
  np.testing.assert_allclose(heads.logits(tokens, lengths),
                             np.asarray(base.logits(tokens, lengths))
                             + np.array([-0.3, 4.7, -5.3]),
                             rtol=1e-5)
  (_, settings), = ranking.parse_variants("d:heads=depth")
  assert settings["heads"] == "depth"
  with pytest.raises(ValueError, match="heads=two"):
    ranking.parse_variants("x:heads=two")
