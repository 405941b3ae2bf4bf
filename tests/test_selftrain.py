"""Self-training building blocks on Game of 24: labelling trees with the
verifier, D_V / D_G from them, greedy evaluation, and a search with a real
tokenizer and LM."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from restmcts_jax import checkpoint
from restmcts_jax import evaluation
from restmcts_jax import sampling
from restmcts_jax import selftrain
from restmcts_jax.models import transformer as tl
from restmcts_jax.models import value_head
from restmcts_jax.search import mcts_star
from restmcts_jax.search import tree as tree_lib
from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry
from restmcts_jax.tokenizer import SentencePieceTokenizer
from tests import sums_task

TASK = registry.get_task("game24")
TASK_MATH = registry.get_task("math")
PUZZLES = [(4, 9, 10, 13), (1, 2, 3, 4)]
MAX_DEPTH, STEP = 4, 24


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  splits = game24.splits()
  texts = game24.warmstart_corpus(splits.train[:200], 300, seed=0)
  texts += [game24.format_text(p, game24.solve(p)) for p in PUZZLES]
  return SentencePieceTokenizer.train(
      texts, tmp_path_factory.mktemp("sp") / "sp", vocab_size=400)


def _tree_with_solution_and_a_wrong_branch(tokenizer):
  """Per puzzle: the solver's 4 steps, plus a wrong final step off step 2."""
  questions, qlen = evaluation.encode_rows(
      tokenizer, [game24.question_text(p) for p in PUZZLES], 16)
  tree = tree_lib.init_tree(jnp.asarray(questions), jnp.asarray(qlen),
                            num_slots=8, branching=2, max_step_len=STEP)
  solutions = [game24.solve(p) for p in PUZZLES]
  parent = jnp.zeros((2,), jnp.int32)
  for depth in range(4):
    lines = [s[depth] + "\n" for s in solutions]
    if depth == 2:  # the wrong sibling: a final step with a wrong answer
      lines = [[l, "Answer: 1 + 2 + 3 + 4 = 10\n"] for l in lines]
    else:
      lines = [[l] for l in lines]
    k = len(lines[0])
    tokens, lengths = evaluation.encode_rows(
        tokenizer, [t for row in lines for t in row], STEP)
    final = np.array([[t.startswith("Answer:") for t in row] for row in lines])
    tree, index = tree_lib.add_children(
        tree, parent, jnp.asarray(tokens).reshape(2, k, STEP),
        jnp.asarray(lengths).reshape(2, k), jnp.full((2, k), 0.5),
        jnp.asarray(final), jnp.ones((2, k), bool))
    parent = index[:, 0]
  return tree


def test_labels_records_and_traces_of_a_solved_tree(tokenizer):
  tree = _tree_with_solution_and_a_wrong_branch(tokenizer)
  correct = selftrain.label_final_nodes(
      tree, TASK, PUZZLES, tokenizer.decode, max_depth=MAX_DEPTH)
  final = np.asarray(tree.final)
  assert final.sum() == 4 and correct.sum() == 2  # solver right, sibling wrong
  records, traces = selftrain.iteration_data(
      tree, correct, max_depth=MAX_DEPTH, top_k=1, min_reward=0.0)
  # Correct path 0.25 .. 1.0 and the wrong final step next to it, per puzzle.
  for q in range(2):
    np.testing.assert_allclose(sorted(records.target[records.question == q]),
                               [0.25, 1 / 3, 0.5, 0.75, 1.0], atol=1e-6)
  assert list(traces.question) == [0, 1]
  for row, n, puzzle in zip(traces.tokens, traces.lengths, PUZZLES):
    text = tokenizer.decode(row[:n].tolist())
    assert game24.verify(puzzle, text)
    assert text == game24.format_text(puzzle, game24.solve(puzzle))


def test_search_and_greedy_evaluation_with_a_tiny_lm(tokenizer):
  config = tl.TransformerConfig(
      vocab_size=tokenizer.vocab_size, embed_dim=32, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  policy = tl.Transformer(config, rngs=nnx.Rngs(0))
  value_model = value_head.make_value_model(policy, share_backbone=False,
                                            rngs=nnx.Rngs(1))
  sampler_config = sampling.SamplerConfig(
      max_step_len=STEP, temperature=1.0,
      stop_token_ids=tokenizer.step_delimiter_ids(),
      eos_token_id=tokenizer.eos_id,
      answer_marker_ids=tuple(tokenizer.encode("Answer")))
  problems = [registry.Problem(game24.question_text(p), p) for p in PUZZLES]
  context = evaluation.EvalContext(
      tokenizer=tokenizer, task=TASK, sampler_config=sampler_config,
      search_config=mcts_star.MCTSConfig(max_depth=MAX_DEPTH,
                                         max_step_len=STEP),
      max_depth=MAX_DEPTH, question_width=16)
  greedy, _ = evaluation.run_method("greedy", 1, (policy, value_model),
                                    context, problems, jax.random.key(0),
                                    greedy_tokens=0.0)
  assert greedy.accuracy == 0.0  # an untrained model does not solve Game of 24
  assert all(t.startswith(p.question)
             for t, p in zip(greedy.solutions, problems))
  questions, qlen = evaluation.encode_rows(
      tokenizer, [p.question for p in problems], 16)
  search = mcts_star.MCTSConfig(num_iterations=3, branch=2, roll_branch=1,
                                roll_forward_steps=1, max_depth=MAX_DEPTH,
                                max_step_len=STEP, stop_at_end_gate=False)
  graphdef, state = nnx.split((policy, value_model))
  result = mcts_star.search_lm(graphdef, state, jnp.asarray(questions),
                               jnp.asarray(qlen),
                               jax.random.split(jax.random.key(0), 2),
                               sampler_config, search)
  correct = selftrain.label_final_nodes(result.tree, TASK, PUZZLES,
                                        tokenizer.decode, max_depth=MAX_DEPTH)
  assert correct.shape == result.tree.final.shape and not correct.any()
  assert np.all(np.asarray(result.tree.num_nodes) >= 3)


def test_the_loop_trains_on_its_own_data_resumes_and_stops_on_nan(
    tmp_path, monkeypatch):
  # A task the tiny model learns in its warm start: the search finds correct
  # solutions with the real verifier, so D_V and D_G are not empty and both
  # training phases run.
  config = sums_task.config(sums_task.write_data(tmp_path / "sums.jsonl"))
  workdir = tmp_path / "run"
  first = selftrain.run(config, workdir)
  assert [m["iteration"] for m in first] == [0, 1]  # 0: after the warm start
  m = first[1]
  assert m["value_records"] > 0 and m["traces"] > 0, m
  assert m["search_solved"] > 0
  assert np.isfinite(m["value_loss"]) and np.isfinite(m["policy_loss"])
  for method in evaluation.METHODS:
    assert 0.0 <= m[f"accuracy_{method}"] <= 1.0
  assert (workdir / "tokenizer.model").is_file()
  # Rerunning with more iterations resumes after iteration 1.
  config.iterations = 2
  second = selftrain.run(config, workdir)
  assert second[:2] == first
  assert second[2]["iteration"] == 2
  assert second[2]["value_records"] >= m["value_records"]  # D_V accumulates
  # A NaN loss stops the run naming the phase; the results so far and the
  # finished iterations' checkpoints stay as they were.
  metrics_before = (workdir / "metrics.jsonl").read_text()
  real_value_loss = selftrain.training_steps.value_loss
  def nan_value_loss(model, batch):
    loss, aux = real_value_loss(model, batch)
    return loss * jnp.nan, aux
  monkeypatch.setitem(selftrain.training_steps.VALUE_LOSSES, "mse",
                      nan_value_loss)
  config.iterations = 3
  with pytest.raises(FloatingPointError,
                     match="value training, iteration 3: loss is nan"):
    selftrain.run(config, workdir)
  assert (workdir / "metrics.jsonl").read_text() == metrics_before
  checkpoints = checkpoint.Checkpointer(workdir / "checkpoints")
  last_eval = len(selftrain.schedule(2)) - 1
  assert checkpoints.latest_step() == last_eval + 1  # the collect phase
  assert checkpoints.read_meta(last_eval)["metrics"] == second


def test_rest_em_trains_the_policy_on_its_distinct_correct_samples(
    tmp_path, monkeypatch):
  # On MATH-format files: the math task's loading, steps and math-verify
  # grading through the whole loop.
  config = sums_task.config(
      sums_task.write_data(tmp_path / "sums.jsonl", task="math"), task="math")
  config.mode = "rest_em"
  # 4 samples per question, at most 1 kept: the cap has work to do.
  config.rest_em.num_samples, config.train.traces_per_question = 4, 1
  read = {}  # what policy SFT is given
  policy_examples = selftrain.Loop._policy_examples
  def spy(loop, traces, seed, train_config):
    read.update(traces=list(traces), decode=loop.tokenizer.decode)
    return policy_examples(loop, traces, seed, train_config)
  monkeypatch.setattr(selftrain.Loop, "_policy_examples", spy)
  m = selftrain.run(config, tmp_path / "run")[1]
  assert m["search_solved"] > 0 and np.isfinite(m["policy_loss"])
  # No process reward: no value records, no value training.
  assert m["value_records"] == 0 and m["value_loss"] is None
  traces = read["traces"]
  assert len(traces) == m["traces"] == m["policy_traces"] > 0
  per_question = {}
  for row, qlen in traces:
    question, solution = read["decode"](row[:qlen]), read["decode"](row[qlen:])
    a, b = map(int, re.findall(r"\d+", question))
    assert TASK_MATH.is_correct(solution, str(a + b)), solution
    assert solution.rstrip().endswith(f"Answer: \\boxed{{{a + b}}}")
    per_question.setdefault(question, []).append(tuple(row))
  for rows in per_question.values():  # distinct, at most the cap each
    assert len(set(rows)) == len(rows) <= config.train.traces_per_question
  assert m["search_solved"] == len(per_question) / len(sums_task.SUMS)
