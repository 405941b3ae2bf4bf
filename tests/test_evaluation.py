"""Held-out evaluation (`evaluation.py`): every method on puzzles a tiny
policy has memorized, what the verifier may decide, majority voting, token
accounting, and the order of `evaluate`'s results."""

import dataclasses

import hypothesis
import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import strategies as st

from configs import tiny
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax.models import value_head
from restmcts_jax.tasks import game24
from restmcts_jax.tasks import registry
from restmcts_jax.tokenizer import SentencePieceTokenizer
from restmcts_jax.training import batching
from restmcts_jax.training import optim
from restmcts_jax.training import steps as train_steps

TASK = registry.get_task("game24")
PUZZLES = [(4, 9, 10, 13), (1, 2, 3, 4), (2, 5, 7, 11)]
SOLUTIONS = [game24.format_text(p, game24.solve(p)) for p in PUZZLES]
PROBLEMS = [registry.Problem(game24.question_text(p), p) for p in PUZZLES]
# The budget in CoT samples. Every model run uses it and the same L, so each
# method compiles once for the whole module.
BUDGET = 4


@pytest.fixture(scope="module")
def config():
  config = tiny.get_config()
  config.sampler.temperature = 0.7
  # Room for MCTS* to reach the end gate: a memorized solution is a chain of
  # four nodes, found in four iterations and gated in the fifth.
  config.eval.mcts_iterations = 16
  return config


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  texts = game24.warmstart_corpus(game24.splits().train[:200], 300, seed=0)
  return SentencePieceTokenizer.train(
      texts + SOLUTIONS, tmp_path_factory.mktemp("sp") / "sp", vocab_size=400)


@pytest.fixture(scope="module")
def context(config, tokenizer):
  return experiment.eval_context(config, tokenizer)


@pytest.fixture(scope="module")
def greedy_tokens(tokenizer):
  """L: the mean generated length of the solver's solutions (what a policy
  that memorized them generates greedily)."""
  return float(np.mean([_generated(tokenizer, t, p.question)
                        for t, p in zip(SOLUTIONS, PROBLEMS)]))


@pytest.fixture(scope="module")
def untrained(config, tokenizer):
  return experiment.models_for(config, tokenizer)


@pytest.fixture(scope="module")
def memorized(config, tokenizer):
  """`(policy, value_model, untrained_value_model)`: a policy trained on the
  three solutions until it reproduces them, and a value model trained to
  score a finished solution 1 and its unfinished prefixes 0."""
  policy, _ = experiment.models_for(config, tokenizer)
  examples = [(tokenizer.encode(t), len(tokenizer.encode(p.question)))
              for t, p in zip(SOLUTIONS, PROBLEMS)]
  batch = next(batching.sft_batches(examples, len(examples), seed=None))
  policy = _fit(policy, train_steps.sft_loss, batch, num_steps=200)
  prefixes, targets = [], []
  for text in SOLUTIONS:
    lines = text.splitlines(keepends=True)
    for depth in range(1, len(lines)):
      prefixes.append(tokenizer.encode("".join(lines[:depth + 1])))
      targets.append(float(depth == len(lines) - 1))
  batch = next(batching.value_batches(prefixes, targets, len(prefixes),
                                      seed=None))
  value = value_head.make_value_model(policy, share_backbone=False,
                                      rngs=nnx.Rngs(1))
  value = _fit(value, train_steps.value_loss, batch, num_steps=60)
  untrained_value = value_head.make_value_model(policy, share_backbone=False,
                                                rngs=nnx.Rngs(1))
  return policy, value, untrained_value


def _fit(model, loss_fn, batch, *, num_steps):
  """`num_steps` AdamW steps on one batch."""
  tx = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=1e-2, warmup_steps=10, total_steps=num_steps))
  graphdef, params = nnx.split(model)
  state = train_steps.init_state(params, tx)
  step = train_steps.make_train_step(graphdef, loss_fn, tx)
  for _ in range(num_steps):
    state, _ = step(state, batch)
  return nnx.merge(graphdef, state.params)


def _generated(tokenizer, text, question):
  return len(tokenizer.encode(text)) - len(tokenizer.encode(question))


def _run(method, models, context, greedy_tokens, problems=PROBLEMS):
  return evaluation.run_method(method, BUDGET, models, context, problems,
                               jax.random.key(0), greedy_tokens=greedy_tokens)


def test_every_method_solves_the_memorized_puzzles(memorized, context,
                                                   greedy_tokens):
  policy, value, _ = memorized
  for method in evaluation.METHODS:
    result, search = _run(method, (policy, value), context, greedy_tokens)
    assert result.accuracy == 1.0, (method, result.solutions)
    assert result.solutions == tuple(SOLUTIONS), method
  # Stopping at the end gate: the value model recognized the finished
  # solution (the game24 default searches the whole budget instead), once
  # the tree holds the chain of four nodes: at twice the budget, spent
  # whole (not in expectation: the last iteration is the gated one).
  gated = dataclasses.replace(context, search_config=dataclasses.replace(
      context.search_config, stop_at_end_gate=True, roll_forward_steps=1,
      stochastic_budget=False))
  result, search = evaluation.run_method(
      "mcts", 2 * BUDGET, (policy, value), gated, PROBLEMS,
      jax.random.key(0), greedy_tokens=greedy_tokens)
  assert result.solutions == tuple(SOLUTIONS)
  assert np.all(search.passed_gate), search.passed_gate


def test_an_untrained_model_solves_none(untrained, context, greedy_tokens):
  for method in evaluation.METHODS:
    result, _ = _run(method, untrained, context, greedy_tokens)
    assert result.accuracy == 0.0, (method, result.solutions)
    assert all(t.startswith(p.question)
               for t, p in zip(result.solutions, PROBLEMS))


def test_with_an_untrained_value_model_mcts_answers_with_a_finished_solution(
    memorized, context, greedy_tokens):
  # The new value head is zero, so every value is sigmoid(0) = 0.5 and stays
  # 0.5 through rollout blends and backups. Best-of-N and ToT-BFS prefer
  # finished solutions and still solve every puzzle. MCTS* never passes the
  # end gate; SPEC's answer is then the node of highest value: on a tie the
  # first one, the root's first child, an unfinished one-step solution. The
  # evaluation's MCTS* (prefer_final_answer) answers with a finished one.
  policy, _, value = memorized
  for method in ("bon", "tot"):
    result, _ = _run(method, (policy, value), context, greedy_tokens)
    assert result.solutions == tuple(SOLUTIONS), method
  spec = dataclasses.replace(context, search_config=dataclasses.replace(
      context.search_config, prefer_final_answer=False))
  result, search = _run("mcts", (policy, value), spec, greedy_tokens)
  used = np.asarray(search.tree.used)
  np.testing.assert_array_equal(np.asarray(search.tree.value)[used], 0.5)
  assert not np.any(search.passed_gate)
  np.testing.assert_array_equal(search.answer_node, 1)
  first_steps = tuple("".join(t.splitlines(keepends=True)[:2])
                      for t in SOLUTIONS)
  assert result.solutions == first_steps
  assert result.accuracy == 0.0
  result, search = _run("mcts", (policy, value), context, greedy_tokens)
  assert not np.any(search.passed_gate)
  # A finished node, or a finished rollout (which ranks as one).
  final = np.asarray(search.tree.final)
  assert all(final[q, a] or search.answer_is_rollout[q]
             for q, a in enumerate(search.answer_node))
  assert result.solutions == tuple(SOLUTIONS)


def test_the_verifier_only_grades(untrained, context, greedy_tokens):
  def with_verdict(verdict):
    task = dataclasses.replace(TASK, is_correct=lambda text, ref: verdict)
    return dataclasses.replace(context, task=task)

  for method in evaluation.METHODS:
    right, _ = _run(method, untrained, with_verdict(True), greedy_tokens)
    wrong, _ = _run(method, untrained, with_verdict(False), greedy_tokens)
    assert (right.accuracy, wrong.accuracy) == (1.0, 0.0)
    assert right.solutions == wrong.solutions, method
    grades = dict(accuracy=0.0)  # all that the verdict may change
    if right.sample_accuracy is not None:
      grades.update(sample_accuracy=0.0)
    assert right.row() | grades == wrong.row(), method


def test_majority_vote_picks_a_solution_with_the_winning_answer():
  texts = [
      # Two of three answers are 2 * 12 once normalized: the first of them.
      "Answer: 1 + 2 = 3\n", "x\nAnswer: (2 * 12) = 24\n", "Answer: 2*12\n",
      # No answer at all: the first sample.
      "1 + 2 = 3 (left: 3)\n", "no answer\n", "\n",
      # A tie: the answer seen first; samples without an answer do not vote.
      "none\n", "Answer: 3 * 8\n", "Answer: 4 * 6\n",
  ]
  assert evaluation._majority_texts(TASK, texts, 3) == [
      texts[1], texts[3], texts[7]]
  assert evaluation._majority_texts(TASK, texts, 9) == [texts[1]]


def test_majority_vote_counts_equal_answers_written_apart_as_one():
  math = registry.get_task("math")
  texts = [r"Answer: \boxed{3}", r"Answer: \boxed{\frac12}",
           r"Answer: \boxed{0.5}", "unfinished", r"Answer: \boxed{3}"]
  # 1/2 and 0.5 outvote 3; with another 3, a tie goes to the first seen.
  assert evaluation._majority_texts(math, texts[:4], 4) == [texts[1]]
  assert evaluation._majority_texts(math, texts, 5) == [texts[0]]
  texts.insert(0, r"Answer: \boxed{\dfrac{1}{2}}")
  assert evaluation._majority_texts(math, texts, 6) == [texts[0]]
  # Compared by string, 3 would win this vote.
  plain = dataclasses.replace(math, same_answer=None)
  assert evaluation._majority_texts(plain, texts, 6) == [texts[1]]


def test_sampled_methods_report_their_samples_tokens(untrained, context,
                                                     greedy_tokens):
  questions, qlen = evaluation.encode_rows(
      context.tokenizer, [p.question for p in PROBLEMS],
      context.question_width)
  graphdef, state = nnx.split(untrained)
  # The same keys as run_method: one per problem, split from key(0).
  out = jax.device_get(evaluation.sample_solutions(
      graphdef, state, questions, qlen,
      jax.random.split(jax.random.key(0), len(PROBLEMS)),
      sampler_config=context.sampler_config, num_samples=BUDGET,
      max_depth=context.max_depth, score=True))
  generated = (out.lengths - np.repeat(qlen, BUDGET)).reshape(-1, BUDGET)
  scored = out.lengths.reshape(-1, BUDGET)
  assert np.all(generated > 0)
  np.testing.assert_array_equal(out.policy_tokens, generated.sum(1))
  np.testing.assert_array_equal(out.value_tokens, scored.sum(1))
  texts = [context.tokenizer.decode(row[:n]) for row, n in zip(out.tokens,
                                                                out.lengths)]
  sc, _ = _run("sc", untrained, context, greedy_tokens)
  bon, _ = _run("bon", untrained, context, greedy_tokens)
  for result in (sc, bon):
    assert result.policy_tokens == pytest.approx(generated.sum(1).mean())
    for q, text in enumerate(result.solutions):  # one of its own samples
      assert text in texts[q * BUDGET:(q + 1) * BUDGET]
  assert sc.value_tokens == 0.0
  assert bon.value_tokens == pytest.approx(scored.sum(1).mean())
  # sample_accuracy counts every sample against its own problem: with a
  # grader that accepts a text when its length plus its reference's sum is
  # even (the references' sums differ in parity), the share of such samples.
  assert len({sum(p.reference) % 2 for p in PROBLEMS}) == 2
  accepts = lambda text, reference: (len(text) + sum(reference)) % 2 == 0
  even = dataclasses.replace(context, task=dataclasses.replace(
      TASK, is_correct=accepts))
  expected = np.mean([accepts(t, PROBLEMS[i // BUDGET].reference)
                      for i, t in enumerate(texts)])
  assert 0 < expected < 1
  for method in ("sc", "bon"):
    result, _ = _run(method, untrained, even, greedy_tokens)
    assert result.sample_accuracy == pytest.approx(expected), method
    assert result.row()["sample_accuracy"] == result.sample_accuracy
  greedy, _ = _run("greedy", untrained, even, greedy_tokens)
  assert greedy.sample_accuracy is None
  assert "sample_accuracy" not in greedy.row()


def test_greedy_reports_the_mean_generated_length(memorized, context,
                                                  greedy_tokens):
  policy, value, _ = memorized
  result, _ = _run("greedy", (policy, value), context, greedy_tokens)
  lengths = [_generated(context.tokenizer, t, p.question)
             for t, p in zip(result.solutions, PROBLEMS)]
  assert result.policy_tokens == np.mean(lengths) == greedy_tokens
  assert result.value_tokens == 0.0


def test_mcts_stops_near_its_token_budget(untrained, context, greedy_tokens):
  result, search = _run("mcts", untrained, context, greedy_tokens)
  budget = round(BUDGET * greedy_tokens)
  c = context.search_config
  most_per_iteration = (c.branch * c.max_step_len + c.roll_forward_steps
                        * c.roll_branch * c.max_step_len)
  spent = np.asarray(search.policy_tokens)
  # The untrained value model never passes the gate and the iteration cap
  # is not reached: the budget is what ended every search.
  assert not np.any(search.passed_gate)
  assert np.all(search.iterations < c.num_iterations), search.iterations
  # `stochastic_budget`: it stopped once its tokens plus a random share of
  # an average iteration's reached the budget, so it is less than one
  # iteration short, and it started its last iteration under the budget.
  assert c.stochastic_budget
  mean_iteration = spent / np.asarray(search.iterations)
  assert np.all(spent + mean_iteration >= budget), spent
  assert np.all(spent < budget + most_per_iteration), spent
  assert result.policy_tokens == pytest.approx(spent.mean())
  assert result.value_tokens == pytest.approx(
      np.mean(search.value_tokens))


@pytest.mark.parametrize("greedy_policy_tokens,length", [(5.0, 5.0),
                                                         (0.0, 1.0)])
def test_evaluate_runs_greedy_once_then_each_method_at_each_budget(
    monkeypatch, context, greedy_policy_tokens, length):
  calls, shown = [], []

  def fake_run(method, samples, models, context, problems, key, *,
               greedy_tokens, indices):
    del indices
    calls.append((method, samples, greedy_tokens,
                  tuple(jax.random.key_data(key).tolist())))
    tokens = greedy_policy_tokens if method == "greedy" else 0.0
    result = evaluation.MethodResult.from_problems(
        method, samples, dict(correct=np.zeros(1), value_tokens=np.zeros(1),
                              policy_tokens=np.full(1, tokens)), ())
    return result, (f"search at {samples}" if method == "mcts" else None)

  monkeypatch.setattr(evaluation, "run_method", fake_run)
  results, search = evaluation.evaluate(
      None, context, PROBLEMS, methods=("sc", "greedy", "mcts"),
      budgets=(4, 1),
      progress=lambda method, samples: shown.append((method, samples)))
  order = [("sc", 1), ("sc", 4), ("greedy", 1), ("mcts", 1), ("mcts", 4)]
  assert [(r.method, r.samples) for r in results] == order
  # Greedy runs first, once, and its length L (at least 1 token) sets the
  # other runs' budgets; every run has its own key; progress follows each.
  assert [c[:2] for c in calls] == shown
  assert shown == [("greedy", 1)] + [m for m in order if m[0] != "greedy"]
  assert [c[2] for c in calls] == [0.0] + [length] * 4
  assert len({c[3] for c in calls}) == len(calls)
  assert search == "search at 4"  # the largest budget's tree


def test_evaluate_and_config_parsers_reject_unknown_methods(untrained,
                                                            context):
  with pytest.raises(ValueError, match="unknown evaluation methods.*foo"):
    evaluation.evaluate(untrained, context, PROBLEMS,
                        methods=("greedy", "foo"), budgets=(1,))
  with pytest.raises(ValueError, match=r"eval\.methods='greedy,foo'.*foo"):
    experiment.parse_methods("greedy,foo")
  for text in ("0,2", "a", ""):
    with pytest.raises(ValueError, match=rf"eval\.budgets={text!r}"):
      experiment.parse_budgets(text)
  with pytest.raises(ValueError, match=r"--methods"):
    experiment.parse_methods(",", key="--methods")
  assert experiment.parse_methods(" sc, greedy ,") == ("sc", "greedy")
  assert experiment.parse_budgets("4, 1,4") == (1, 4)


def test_length_buckets_default_parse_and_name_their_key(config):
  config = config.copy_and_resolve_references()
  config.train.length_buckets = ""
  assert experiment.length_buckets(config) == batching.DEFAULT_BUCKETS
  config.train.length_buckets = "1024, 256,512"
  assert experiment.length_buckets(config) == (256, 512, 1024)
  config.train.length_buckets = "256,long"
  with pytest.raises(ValueError, match=r"train\.length_buckets='256,long'"):
    experiment.length_buckets(config)
  with pytest.raises(ValueError, match=r"300 tokens .* train\.length_buckets"):
    batching.bucket_length(300, (128, 256))


def test_eval_search_settings_apply_over_the_training_search(config,
                                                            tokenizer):
  config = config.copy_and_resolve_references()
  config.search.update(branch=2, exploration=0.5, roll_forward_steps=1,
                       widen_visits=2, widen_after_final=True)
  config.eval.search.update(branch=3, exploration=0.7, max_expansions=1,
                            widen_visits=0, stop_at_end_gate=True,
                            rollout_answers=False)
  with config.eval.search.unlocked():
    del config.eval.search["roll_forward_steps"]
    del config.eval.search["widen_after_final"]
  search = experiment.eval_context(config, tokenizer).search_config
  assert not search.widen_after_final  # not the training search's
  assert (search.branch, search.exploration) == (3, 0.7)
  assert search.roll_forward_steps == 1  # not set apart: the training one
  assert search.num_iterations == config.eval.mcts_iterations
  assert search.stop_at_end_gate and search.gate_requires_final
  assert (search.max_expansions, search.skip_exhausted) == (1, True)
  with config.eval.search.unlocked():
    config.eval.search.update(stop_at_end_gate=False, max_expansions=3,
                              skip_exhausted=True, rollout_answers=True,
                              widen_visits=2, stochastic_budget=True)
    config.eval.search.widen_after_final = True
  search = experiment.eval_context(config, tokenizer).search_config
  assert (search.stop_at_end_gate, search.max_expansions) == (False, 3)
  assert search.rollout_answers and search.widen_visits == 2
  assert search.widen_after_final
  assert search.max_children == 9
  assert search.stochastic_budget
  # A workdir whose eval.search predates these keys answered at the gate,
  # with its training search's single expansions and no widening.
  config.search.update(stop_at_end_gate=False, max_expansions=1,
                       widen_visits=0, widen_after_final=False)
  with config.eval.search.unlocked():
    del config.eval.search["stop_at_end_gate"]
    del config.eval.search["max_expansions"]
    del config.eval.search["rollout_answers"]
    del config.eval.search["widen_visits"]
    del config.eval.search["widen_after_final"]
    del config.eval.search["stochastic_budget"]
  search = experiment.eval_context(config, tokenizer).search_config
  assert not search.stochastic_budget  # the training search's (backfilled)
  assert (search.stop_at_end_gate, search.max_expansions) == (True, 1)
  assert not search.rollout_answers and search.widen_visits == 0
  assert not search.widen_after_final
  config.eval.search.update(max_expansions=3, skip_exhausted=False)
  with pytest.raises(ValueError,
                     match=r"config\.eval\.search \(over config\.search\): "
                     r"max_expansions=3 .* "
                     "skip_exhausted=True"):
    experiment.eval_context(config, tokenizer)
  with config.eval.search.unlocked():
    config.eval.search.temperature = 0.5
  with pytest.raises(ValueError, match=r"config\.eval\.search\.temperature"):
    experiment.eval_context(config, tokenizer)


def test_a_problems_solution_does_not_depend_on_the_others(untrained,
                                                           context,
                                                           greedy_tokens):
  # Keys are split per problem position, so each problem keeps its place
  # while another problem is replaced.
  other = registry.Problem(game24.question_text((1, 1, 4, 6)), (1, 1, 4, 6))
  first, _ = _run("sc", untrained, context, greedy_tokens)
  second, _ = _run("sc", untrained, context, greedy_tokens,
                   problems=PROBLEMS[:2] + [other])
  assert first.solutions[:2] == second.solutions[:2]


@pytest.mark.slow
def test_evaluating_in_batches_gives_the_same_results(memorized, untrained,
                                                      context):
  """Batches of 2 (the last one padded) against all problems at once, for
  every method: each problem draws from its own key."""
  problems = PROBLEMS + [registry.Problem(game24.question_text(p), p)
                         for p in ((1, 1, 4, 6), (2, 3, 4, 6))]
  assert len(problems) % 2
  for models in (memorized[:2], untrained):
    whole, _ = evaluation.evaluate(models, context, problems,
                                   methods=evaluation.METHODS, budgets=[BUDGET])
    batched, _ = evaluation.evaluate(
        models, dataclasses.replace(context, batch_size=2), problems,
        methods=evaluation.METHODS, budgets=[BUDGET])
    for a, b in zip(whole, batched):
      assert a.row() == b.row() and a.solutions == b.solutions, a.method
      assert len(b.solutions) == len(problems)


@pytest.mark.parametrize("samples, branch, max_depth, beam", [
    (2, 2, 4, 1),   # 2 + 2 + 2 + 2 = 8 steps = 2 solutions of 4
    (4, 2, 4, 2),   # 2 + 4 + 4 + 4 = 14 against 16 (3 entries: 18, a tie)
    (8, 2, 4, 8),   # 2 + 4 + 8 + 16 = 30, all the tree has (N / b = 4: 22)
    (4, 3, 4, 1),   # 3 + 3 + 3 + 3 = 12 against 16 (2 entries: 21)
    (1, 2, 4, 1),   # at least one entry
    (6, 3, 1, 1),   # one step deep: the root's 3 samples, whatever k
])
def test_tot_beam_matches_the_steps_of_n_solutions(samples, branch,
                                                   max_depth, beam):
  assert evaluation.tot_beam(samples, branch, max_depth) == beam


@hypothesis.given(samples=st.integers(1, 64), branch=st.integers(1, 5),
                  max_depth=st.integers(1, 12))
def test_tot_beam_steps_are_the_nearest_to_the_budget(samples, branch,
                                                      max_depth):
  def steps(k):  # the beam fills level by level from the root
    alive, total = 1, 0
    for _ in range(max_depth):
      total += alive * branch
      alive = min(k, alive * branch)
    return total
  k = evaluation.tot_beam(samples, branch, max_depth)
  target = samples * max_depth
  assert k >= 1 and steps(k) == evaluation.tot_search_steps(
      k, branch, max_depth)
  assert all(abs(steps(k) - target) <= abs(steps(j) - target)
             for j in range(1, target + 2))
