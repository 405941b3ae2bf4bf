"""MCTS* on batched trees: invariants on random searches, batch
independence, masking of finished rows, and a search driven by real LMs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from restmcts_jax import sampling
from restmcts_jax.models import value_head
from restmcts_jax.search import mcts_star
from restmcts_jax.search import tree as tree_lib
from tests import toy_models
from tests.test_transformer import TINY, _model

CONFIGS = [
    mcts_star.MCTSConfig(num_iterations=8, branch=3, roll_branch=2,
                         roll_forward_steps=2, max_depth=5, max_step_len=2,
                         stop_at_end_gate=False),
    mcts_star.MCTSConfig(num_iterations=10, branch=2, roll_branch=1,
                         roll_forward_steps=3, max_depth=4, max_step_len=2,
                         exploration=0.5, unvisited_bonus=0.9, end_gate=0.8),
]


@functools.partial(jax.jit, static_argnames="config")
def _toy_search(questions, lengths, keys, config):
  return mcts_star.search(toy_models.MODELS, questions, lengths, keys, config)


def _questions(rows):
  width = max(map(len, rows))
  q = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    q[i, :len(r)] = r
  return jnp.array(q), jnp.array([len(r) for r in rows])


def _run(rows, config, seed=0):
  q, ql = _questions(rows)
  return _toy_search(q, ql, jax.random.split(jax.random.key(seed), len(rows)),
                     config)


def _check_invariants(result, config, expansions=None):
  """Tree and statistics invariants; with `expansions [B, N]` (nodes
  expanded again), a node's visits may exceed its children's by one per
  expansion that added nothing."""
  t = jax.tree.map(np.asarray, result.tree)
  for b in range(t.parent.shape[0]):
    n = t.num_nodes[b]
    value, visits = t.value[b], t.visits[b]
    assert np.all((value[:n] >= 0) & (value[:n] <= 1))
    assert np.all(t.depth[b, 1:n] == t.depth[b, t.parent[b, 1:n]] + 1)
    assert np.all(t.parent[b, 1:n] < np.arange(1, n))  # a tree: no cycles
    assert np.all(t.depth[b, :n] <= config.max_depth)
    assert visits[0] == result.iterations[b]
    for p in range(n):
      kids = t.children[b, p][t.children[b, p] >= 0]
      assert np.all(t.parent[b, kids] == p)
      if len(kids):
        # Back-ups through p reach exactly one child each; p may also have
        # had its own rollout visit when it was created.
        extra = visits[p] - visits[kids].sum()
        wasted = 0 if expansions is None else expansions[b, p] - 1
        assert 0 <= extra <= (p > 0) + wasted
        if visits[kids].sum():
          mean = (visits[kids] * value[kids]).sum() / visits[kids].sum()
          np.testing.assert_allclose(value[p], mean, rtol=1e-5, atol=1e-6)
        assert not t.final[b, p]
    assert np.all(t.parent[b, n:] == -1) and np.all(visits[n:] == 0)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=4),
                min_size=3, max_size=3),
       st.sampled_from(range(len(CONFIGS))))
def test_random_searches_keep_tree_invariants(rows, config_index):
  config = CONFIGS[config_index]
  result = _run(rows, config)
  _check_invariants(result, config)
  gate = np.asarray(result.passed_gate)
  values = np.asarray(result.tree.value)
  answers = np.asarray(result.answer_node)
  for b in range(3):
    if gate[b]:
      assert values[b, answers[b]] >= config.end_gate
    else:
      assert result.iterations[b] == config.num_iterations
      n = int(result.tree.num_nodes[b])
      assert values[b, answers[b]] == values[b, 1:n].max()


def test_a_question_does_not_depend_on_its_batch_mates():
  rows = [[3, 4], [5, 1, 2], [9], [7, 7, 7, 1]]
  for config in CONFIGS:
    batch = _run(rows, config)
    for i, row in enumerate(rows):
      alone = _run([row], config)
      q = jax.tree.map(lambda x: x[i:i + 1], batch)
      for name in ("parent", "children", "visits", "step_tokens"):
        np.testing.assert_array_equal(getattr(q.tree, name),
                                      getattr(alone.tree, name), err_msg=name)
      np.testing.assert_array_equal(q.answer_node, alone.answer_node)
      np.testing.assert_array_equal(q.policy_tokens, alone.policy_tokens)


def test_finished_rows_are_masked():
  """A row that stopped at the gate is not touched by later iterations."""
  config = CONFIGS[1]
  rows = [[i, i + 1] for i in range(1, 13)]
  short = _run(rows, config)
  longer = _run(rows, mcts_star.MCTSConfig(
      **{**config.__dict__, "num_iterations": 30}))
  stopped = np.asarray(short.passed_gate)
  assert stopped.any() and not stopped.all()
  for name in ("visits", "value", "parent"):
    a = np.asarray(getattr(short.tree, name))
    b = np.asarray(getattr(longer.tree, name))[:, :a.shape[1]]
    np.testing.assert_array_equal(a[stopped], b[stopped], err_msg=name)
  np.testing.assert_array_equal(np.asarray(short.iterations)[stopped],
                                np.asarray(longer.iterations)[stopped])


def test_token_budget_stops_a_question():
  """A question starts another iteration while its tokens plus half its
  mean iteration's tokens are under the budget."""
  rows = [[3, 4], [5, 1, 2], [7], [9, 9]]
  config = dataclasses.replace(CONFIGS[0], token_budget=40)
  result = _run(rows, config)
  iters = np.asarray(result.iterations)
  spent = np.asarray(result.policy_tokens)
  assert np.all(iters < CONFIGS[0].num_iterations)
  assert np.all(spent + spent / (2 * iters) >= 40)
  assert np.any(iters > 1)
  # One iteration earlier (the same searches, capped there) each was under.
  for b in range(len(rows)):
    before = _run(rows, dataclasses.replace(
        config, num_iterations=int(iters[b]) - 1))
    n, used = int(before.iterations[b]), int(before.policy_tokens[b])
    assert n == iters[b] - 1
    assert used + used / (2 * max(n, 1)) < 40


def _fixed_cost_models(value: float = 0.5) -> mcts_star.TokenModels:
  """A policy whose k proposals are the distinct one-token steps 1..k, never
  final, and a constant value: every expansion costs exactly k tokens."""
  def policy_fn(prefix, lengths, keys, num_samples):
    del lengths, keys
    rows = prefix.shape[0] * num_samples
    steps = jnp.tile(jnp.arange(1, num_samples + 1), prefix.shape[0])
    tokens = jnp.stack([steps, jnp.zeros_like(steps)], axis=1)
    return mcts_star.Proposals(tokens=tokens.astype(jnp.int32),
                               lengths=jnp.ones((rows,), jnp.int32),
                               is_final=jnp.zeros((rows,), bool))
  score = lambda tokens, lengths: jnp.full(tokens.shape[:1], value)
  return mcts_star.TokenModels(policy_fn, mcts_star.concat_value_fn(score))


@pytest.mark.parametrize("stochastic", [False, True])
def test_stochastic_budget_spends_the_budget_in_expectation(stochastic):
  """Iterations cost 2 tokens and the budget is 5: the half-iteration rule
  stops every question at 4 tokens (4 + 1 is not under 5); the stochastic
  rule starts a third iteration with probability (5 - 4) / 2, 6 tokens, so
  a question spends 5 in expectation."""
  config = mcts_star.MCTSConfig(
      num_iterations=8, branch=2, roll_forward_steps=0, max_depth=6,
      max_step_len=2, stop_at_end_gate=False, token_budget=5,
      stochastic_budget=stochastic)
  n = 400
  q, ql = _questions([[3, 4]] * n)
  keys = jax.random.split(jax.random.key(0), n)
  result = jax.jit(functools.partial(
      mcts_star.search, _fixed_cost_models(), config=config))(q, ql, keys)
  spent = np.asarray(result.policy_tokens)
  np.testing.assert_array_equal(spent, 2 * np.asarray(result.iterations))
  if not stochastic:
    np.testing.assert_array_equal(spent, 4)
    return
  assert set(np.unique(spent)) == {4, 6}
  # 400 draws of p = 1/2: the share's standard error is 0.025.
  assert abs(np.mean(spent == 6) - 0.5) < 0.1
  assert abs(spent.mean() - 5) < 0.2


def test_a_traced_token_budget_searches_as_the_static_one():
  q, ql = _questions([[3, 4], [5, 1, 2], [7]])
  keys = jax.random.split(jax.random.key(0), 3)
  static = _run([[3, 4], [5, 1, 2], [7]], mcts_star.MCTSConfig(
      **{**CONFIGS[0].__dict__, "token_budget": 12}))
  search = jax.jit(functools.partial(mcts_star.search, toy_models.MODELS,
                                     config=CONFIGS[0]))
  traced = search(q, ql, keys, token_budget=jnp.int32(12))
  jax.tree.map(np.testing.assert_array_equal, static, traced)
  # Per question: only the first row stops early.
  per_row = search(q, ql, keys, token_budget=jnp.array([12, 0, 0]))
  assert per_row.iterations[0] == static.iterations[0]
  np.testing.assert_array_equal(per_row.iterations[1:],
                                CONFIGS[0].num_iterations)


def _lm_models():
  """A tiny policy and a value model on a copy of it with a random head:
  `(value_model, graphdef, state)` of the pair."""
  policy = _model()
  value_model = value_head.make_value_model(policy, share_backbone=False,
                                            rngs=nnx.Rngs(3))
  value_model.head.kernel.set_value(
      jax.random.normal(jax.random.key(1), (TINY.embed_dim,)))
  return (value_model,) + nnx.split((policy, value_model))


def test_search_with_language_models_with_and_without_node_caches():
  value_model, graphdef, state = _lm_models()
  config = mcts_star.MCTSConfig(num_iterations=5, branch=3, roll_branch=2,
                                roll_forward_steps=2, max_depth=4,
                                max_step_len=6, stop_at_end_gate=False)
  sampler_config = sampling.SamplerConfig(
      max_step_len=6, temperature=1.0, stop_token_ids=(5, 9, 17, 33),
      eos_token_id=2, answer_marker_ids=(40,))
  q, ql = _questions([[3, 4, 10], [11, 12], [20, 21, 22, 23]])
  keys = jax.random.split(jax.random.key(0), 3)
  cached, recomputed = (
      mcts_star.search_lm(graphdef, state, q, ql, keys, sampler_config, config,
                          cache_nodes=cache_nodes)
      for cache_nodes in (True, False))
  for result in (cached, recomputed):
    _check_invariants(result, config)
    assert np.all(np.asarray(result.iterations) == 5)
    assert np.all(np.asarray(result.tree.num_nodes) > 3)
  # Assembling prefixes from per-node caches changes nothing but the cost.
  for name in ("parent", "children", "visits", "step_tokens", "final"):
    np.testing.assert_array_equal(getattr(cached.tree, name),
                                  getattr(recomputed.tree, name), name)
  np.testing.assert_allclose(cached.tree.value, recomputed.tree.value,
                             atol=1e-5)
  np.testing.assert_array_equal(cached.policy_tokens, recomputed.policy_tokens)
  np.testing.assert_array_equal(cached.value_tokens, recomputed.value_tokens)
  # Every node's prior value is what the value model says of its prefix.
  tree = cached.tree
  nodes = jnp.array([int(tree.num_nodes[b]) - 1 for b in range(3)])
  tokens, lengths = tree_lib.gather_prefix(tree, nodes, max_depth=4,
                                           max_len=40)
  np.testing.assert_allclose(tree.prior_value[jnp.arange(3), nodes],
                             value_model(tokens, lengths), atol=1e-5)
  assert np.all(np.asarray(cached.policy_tokens) > 0)


@pytest.mark.parametrize("max_depth,roll_forward_steps,max_expansions",
                         [(1, 0, 1), (2, 1, 1), (1, 1, 2)])
def test_cached_search_at_the_tightest_context_widths(max_depth,
                                                      roll_forward_steps,
                                                      max_expansions):
  """Steps always as long as max_step_len (no stop token) and questions
  shorter than a step: every context is filled to the width the phase
  allows; the cached search still equals re-encoding, also when the root is
  expanded again (at max_depth 1 its first children are all exhausted)."""
  value_model, graphdef, state = _lm_models()
  config = mcts_star.MCTSConfig(
      num_iterations=4, branch=2, roll_branch=2,
      roll_forward_steps=roll_forward_steps, max_depth=max_depth,
      max_step_len=5, stop_at_end_gate=False,
      skip_exhausted=max_expansions > 1, max_expansions=max_expansions)
  sampler_config = sampling.SamplerConfig(max_step_len=5, temperature=1.0)
  q, ql = _questions([[3, 4, 10], [11, 12]])
  keys = jax.random.split(jax.random.key(0), 2)
  cached, recomputed = (
      mcts_star.search_lm(graphdef, state, q, ql, keys, sampler_config, config,
                          cache_nodes=cache_nodes)
      for cache_nodes in (True, False))
  assert np.all(np.asarray(cached.tree.step_len)[:, 1:][
      np.asarray(cached.tree.used)[:, 1:]] == 5)
  assert int(np.max(cached.tree.depth)) == max_depth
  np.testing.assert_array_equal(cached.expansions[:, 0], max_expansions)
  for name in ("parent", "children", "visits", "step_tokens"):
    np.testing.assert_array_equal(getattr(cached.tree, name),
                                  getattr(recomputed.tree, name), name)
  np.testing.assert_allclose(cached.tree.value, recomputed.tree.value,
                             atol=1e-5)


def test_equal_selection_scores_are_broken_at_random_by_the_questions_key():
  """SPEC: ties broken at random. Three children of equal value: the one
  expanded at iteration 2 is spread over all three across question keys
  (always the same one without `random_ties`), and a key always picks the
  same one."""
  def policy_fn(prefix, lengths, keys, k):  # steps [1], [2], [3]
    del lengths, keys
    r = prefix.shape[0] * k
    tokens = jnp.tile(jnp.arange(1, k + 1), prefix.shape[0])
    return mcts_star.Proposals(
        tokens=jnp.stack([tokens, jnp.zeros_like(tokens)], 1),
        lengths=jnp.ones(r, jnp.int32), is_final=jnp.zeros(r, bool))
  models = mcts_star.TokenModels(policy_fn, mcts_star.concat_value_fn(
      lambda tokens, lengths: jnp.full(tokens.shape[:1], 0.5)))
  q, ql = _questions([[7]] * 120)
  keys = jax.random.split(jax.random.key(0), 120)
  run = jax.jit(functools.partial(mcts_star.search, models),
                static_argnames="config")
  parents = {}
  for random_ties in (True, False):
    config = mcts_star.MCTSConfig(
        num_iterations=2, branch=3, roll_forward_steps=0, max_depth=3,
        max_step_len=2, stop_at_end_gate=False, random_ties=random_ties)
    tree = run(q, ql, keys, config=config).tree
    assert np.all(np.asarray(tree.num_nodes) == 7)
    parents[random_ties] = np.asarray(tree.parent[:, 4])
  assert len(set(parents[False].tolist())) == 1
  counts = np.bincount(parents[True], minlength=4)[1:]
  assert counts.sum() == 120 and counts.min() >= 25, counts
  again = run(q[:10], ql[:10], keys[:10], config=config.__class__(
      **{**config.__dict__, "random_ties": True})).tree
  np.testing.assert_array_equal(again.parent[:, 4], parents[True][:10])


def _exhausted_reference(t, b, config, expansions=None):
  """Plain-Python `exhausted_nodes` of tree `b`: by recursion from the
  definition (`expansions [B, N]`: None, each inner node expanded once)."""
  def exhausted(p):
    kids = [k for k in t.children[b, p] if k >= 0]
    if kids:
      spent = expansions is None or (
          expansions[b, p] >= config.max_expansions)
      return spent and all(exhausted(k) for k in kids)
    stuck = t.final[b, p] or t.depth[b, p] >= config.max_depth
    stops = config.stop_at_end_gate and t.value[b, p] >= config.end_gate and (
        t.final[b, p] or not config.gate_requires_final)
    return bool(stuck and not stops)
  return [exhausted(p) for p in range(int(t.num_nodes[b]))]


SKIPPING = [mcts_star.MCTSConfig(**{**c.__dict__, "skip_exhausted": True,
                                    "num_iterations": 40})
            for c in CONFIGS] + [
    # As evaluation answers: the gate takes finished solutions only, so an
    # unfinished leaf at max_depth is exhausted whatever its value.
    mcts_star.MCTSConfig(**{**CONFIGS[1].__dict__, "skip_exhausted": True,
                            "num_iterations": 40, "max_depth": 2,
                            "end_gate": 0.3, "gate_requires_final": True})]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=4),
                min_size=3, max_size=3),
       st.sampled_from(range(len(SKIPPING))))
def test_skipping_exhausted_subtrees_expands_every_iteration(rows, index):
  """Each iteration selects a leaf it can expand (or stop at), so every one
  adds a node; a search that stops early without a gate node has nothing
  left to select; the exhausted set matches its definition."""
  config = SKIPPING[index]
  result = _run(rows, config)
  _check_invariants(result, config)
  t = jax.tree.map(np.asarray, result.tree)
  exhausted = np.asarray(jax.vmap(
      lambda tree: mcts_star.exhausted_nodes(tree, config))(result.tree))
  for b in range(3):
    n = int(t.num_nodes[b])
    assert list(exhausted[b, :n]) == _exhausted_reference(t, b, config)
    assert not exhausted[b, n:].any()
    iterations = int(result.iterations[b])
    gated = bool(result.passed_gate[b])
    assert n - 1 >= iterations - gated
    if iterations < config.num_iterations and not gated:
      assert exhausted[b, 0]


def test_without_skipping_dead_leaves_are_selected_again():
  """The SPEC behaviour the option changes: searches re-select finished
  leaves, iterations that add no node (so the test above can fail)."""
  config = mcts_star.MCTSConfig(**{**SKIPPING[1].__dict__,
                                   "skip_exhausted": False})
  rows = [[i, i + 3] for i in range(1, 9)]
  def wasted(result):  # iterations that added no node
    return (np.asarray(result.iterations) - np.asarray(result.passed_gate)
            - (np.asarray(result.tree.num_nodes) - 1))
  assert wasted(_run(rows, config)).max() > 0
  assert wasted(_run(rows, SKIPPING[1])).max() <= 0


def _keyed_models(num_steps=4):
  """A toy policy that draws each step from `num_steps` choices with its key
  (so an expansion repeats steps, and a second one can find new ones):
  step [t] (t odd) or [t, t], final iff t == num_steps; value of a prefix
  from `toy_models.score`."""
  def policy_fn(prefix, lengths, keys, k):
    del lengths
    assert keys.shape[0] == prefix.shape[0] * k
    t = 1 + jax.vmap(lambda key: jax.random.randint(key, (), 0, num_steps))(
        keys)
    odd = t % 2 == 1
    return mcts_star.Proposals(
        tokens=jnp.stack([t, jnp.where(odd, 0, t)], 1).astype(jnp.int32),
        lengths=jnp.where(odd, 1, 2), is_final=t == num_steps)
  return mcts_star.TokenModels(policy_fn,
                               mcts_star.concat_value_fn(toy_models.score))


@functools.partial(jax.jit, static_argnames="config")
def _keyed_search(questions, lengths, keys, config):
  return mcts_star.search(_keyed_models(), questions, lengths, keys, config)


def _run_keyed(rows, config, seed=0):
  q, ql = _questions(rows)
  return _keyed_search(q, ql,
                       jax.random.split(jax.random.key(seed), len(rows)),
                       config)


WIDENING = [mcts_star.MCTSConfig(**{**c.__dict__, "max_expansions": e})
            for c, e in zip(SKIPPING, (2, 3, 4))]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=4),
                min_size=3, max_size=3),
       st.sampled_from(range(len(WIDENING))), st.integers(0, 3))
def test_expanding_again_keeps_the_tree_a_search_tree(rows, index, seed):
  """With `max_expansions`, nodes are expanded up to that many times, only
  once their children are all exhausted; children stay distinct steps and
  visits and values stay consistent; a search ends early only when even
  re-expansion has nothing left."""
  config = WIDENING[index]
  result = _run_keyed(rows, config, seed)
  t = jax.tree.map(np.asarray, result.tree)
  expansions = np.asarray(result.expansions)
  _check_invariants(result, config, expansions)
  exhausted = np.asarray(jax.vmap(
      lambda tree, e: mcts_star.exhausted_nodes(tree, config, e))(
          result.tree, result.expansions))
  assert t.children.shape[-1] == config.branch * config.max_expansions
  for b in range(3):
    n = int(t.num_nodes[b])
    assert list(exhausted[b, :n]) == _exhausted_reference(t, b, config,
                                                          expansions)
    assert np.all(expansions[b] <= config.max_expansions)
    assert np.all(expansions[b, n:] == 0)
    for p in range(n):
      kids = t.children[b, p][t.children[b, p] >= 0]
      assert len(kids) <= config.branch * expansions[b, p]
      assert (len(kids) > 0) == (expansions[b, p] > 0)
      steps = {tuple(t.step_tokens[b, k, :t.step_len[b, k]]) for k in kids}
      assert len(steps) == len(kids)  # identical steps merged
      if expansions[b, p] > 1:
        # Expanded again only once its children had run out, the first
        # one (slot 0) among them; being exhausted is for good.
        assert exhausted[b, t.children[b, p, 0]]
    if (int(result.iterations[b]) < config.num_iterations
        and not result.passed_gate[b]):
      assert exhausted[b, 0]


def test_expanding_again_spends_the_budget_a_run_out_tree_leaves():
  """Four possible steps, b = 2: most trees run out with single expansions
  and stop early; expanding again lets them search on, to more nodes and
  more finished solutions, with the same first expansion."""
  rows = [[i, i + 5] for i in range(1, 25)]
  once = mcts_star.MCTSConfig(num_iterations=30, branch=2, roll_branch=1,
                              roll_forward_steps=0, max_depth=3,
                              max_step_len=2, stop_at_end_gate=False,
                              skip_exhausted=True)
  again = mcts_star.MCTSConfig(**{**once.__dict__, "max_expansions": 2})
  a, b = _run_keyed(rows, once), _run_keyed(rows, again)
  ended_early = np.asarray(a.iterations) < once.num_iterations
  assert ended_early.mean() > 0.5
  assert np.sum(b.iterations) > 1.3 * np.sum(a.iterations)
  assert np.sum(b.tree.num_nodes) > 1.3 * np.sum(a.tree.num_nodes)
  finished = lambda r: np.sum(np.asarray(r.tree.final & r.tree.used))
  assert finished(b) > finished(a)
  # The root's first expansion (iteration 0) is the same.
  np.testing.assert_array_equal(a.tree.step_tokens[:, 1:3],
                                b.tree.step_tokens[:, 1:3])
  assert np.asarray(b.expansions).max() == 2


def test_expanding_again_needs_skipping_exhausted_subtrees():
  with pytest.raises(ValueError, match="skip_exhausted"):
    mcts_star.MCTSConfig(max_expansions=2)
  with pytest.raises(ValueError, match="max_expansions"):
    mcts_star.MCTSConfig(max_expansions=0)


def test_a_rollout_answer_is_its_start_node_s_prefix_and_its_steps():
  """`answer_rows` writes out each answer: where the best finished rollout
  is the answer, V's value of the written row is the rollout's own value,
  and it outranks every node; elsewhere the row is the answer node's."""
  rows = [[i, i + 3, 2 * i] for i in range(1, 17)]
  config = mcts_star.MCTSConfig(num_iterations=3, branch=2, roll_branch=2,
                                roll_forward_steps=3, max_depth=3,
                                max_step_len=2, stop_at_end_gate=False,
                                rollout_answers=True)
  out = jax.tree.map(np.asarray, _run(rows, config))
  tokens, lengths = mcts_star.answer_rows(out, max_depth=config.max_depth)
  written = np.asarray(toy_models.score(jnp.asarray(tokens),
                                        jnp.asarray(lengths)))
  t = out.tree
  from_rollout = out.answer_is_rollout
  assert 0 < from_rollout.sum() < len(rows)
  np.testing.assert_allclose(written[from_rollout],
                             out.best_rollout.value[from_rollout], atol=1e-6)
  for b in np.nonzero(from_rollout)[0]:
    assert out.best_rollout.value[b] > t.value[b, 1:t.num_nodes[b]].max()
    assert lengths[b] > t.depth[b, out.answer_node[b]]
  # Other rows: the answer node's prefix, as without rollout answers.
  plain = jax.tree.map(np.asarray, _run(
      rows, dataclasses.replace(config, rollout_answers=False)))
  np.testing.assert_array_equal(plain.tree.value, t.value)
  same = ~from_rollout
  np.testing.assert_array_equal(plain.answer_node[same], out.answer_node[same])
  plain_tokens, plain_lengths = mcts_star.answer_rows(plain, max_depth=3)
  np.testing.assert_array_equal(plain_lengths[same], lengths[same])
  width = plain_tokens.shape[1]
  np.testing.assert_array_equal(plain_tokens[same], tokens[same][:, :width])


def _widening(widen_visits, **overrides):
  return mcts_star.MCTSConfig(**{
      "num_iterations": 12, "branch": 2, "roll_branch": 1,
      "roll_forward_steps": 1, "max_depth": 6, "max_step_len": 2,
      "stop_at_end_gate": False, "skip_exhausted": True, "max_expansions": 3,
      "widen_visits": widen_visits, **overrides})


def test_nodes_due_for_widening_on_a_hand_built_tree():
  """Root expanded once (two children, one final) and a child at max_depth:
  a node widens once its visits reach widen_visits * expansions**2, while it
  has expansions left and can be expanded."""
  config = _widening(2, max_depth=1)
  t = tree_lib.init_tree(jnp.ones((1, 2), jnp.int32), jnp.array([2]),
                         num_slots=4, branching=6, max_step_len=1)
  t, _ = tree_lib.add_children(
      t, jnp.array([0]), jnp.array([[[3], [4]]]), jnp.array([[1, 1]]),
      jnp.array([[0.2, 0.9]]), jnp.array([[False, True]]),
      jnp.array([[True, True]]))
  t = jax.tree.map(lambda x: x[0], t)
  due = lambda visits, expansions, config=config: np.asarray(
      mcts_star.widens(t.replace(visits=jnp.array(visits)), config,
                       jnp.array(expansions))).tolist()
  assert due([1, 5, 5, 0], [1, 0, 0, 0]) == [False] * 4
  assert due([2, 5, 5, 0], [1, 0, 0, 0]) == [True, False, False, False]
  assert due([7, 5, 5, 0], [2, 0, 0, 0]) == [False] * 4  # 2 * 2**2 = 8
  assert due([8, 5, 5, 0], [2, 0, 0, 0])[0]
  assert not due([50, 5, 5, 0], [3, 0, 0, 0])[0]  # max_expansions spent
  # A final node, and one at max_depth, cannot be expanded at all.
  assert due([9, 9, 9, 0], [1, 1, 1, 0]) == [True, False, False, False]
  assert due([9, 9, 9, 0], [1, 1, 1, 0], dataclasses.replace(
      config, max_depth=6))[1]
  assert due([50, 5, 5, 0], [1, 0, 0, 0], dataclasses.replace(
      config, widen_visits=0)) == [False] * 4
  # widen_after_final: only above a final node (node 2).
  deep = dataclasses.replace(config, max_depth=6)
  gated = dataclasses.replace(deep, widen_after_final=True)
  assert due([9, 9, 9, 0], [1, 1, 0, 0], deep) == [True, True, False, False]
  assert due([9, 9, 9, 0], [1, 1, 0, 0], gated) == [True, False, False,
                                                     False]
  t = t.replace(final=t.final.at[2].set(False))
  assert due([9, 9, 9, 0], [1, 1, 0, 0], gated) == [False] * 4
  assert np.asarray(mcts_star.finished_below(t, 6)).tolist() == [False] * 4


def test_widening_expands_the_root_again_on_schedule_from_new_children():
  """widen_visits = 2: the first two iterations are those of the search
  without widening; the third (root visits 2) expands the root again and
  rolls out from one of its new children, the old ones untouched; by
  iteration 8 (visits 8 = 2 * 2**2) the root has its third expansion."""
  rows = [[i, 2 * i + 1] for i in range(1, 25)]
  plain = lambda n: _run_keyed(rows, _widening(0, num_iterations=n))
  widened = lambda n: _run_keyed(rows, _widening(2, num_iterations=n))
  two, two_widened = plain(2), widened(2)
  np.testing.assert_array_equal(two.tree.step_tokens,
                                two_widened.tree.step_tokens)
  np.testing.assert_array_equal(two.tree.visits, two_widened.tree.visits)
  three = jax.tree.map(np.asarray, widened(3))
  assert np.all(three.expansions[:, 0] == 2)
  assert np.all(plain(3).expansions[:, 0] == 1)
  old_kids = np.asarray(two.tree.children[:, 0])  # the first expansion's
  rolled_out_from_new = 0
  for b in range(len(rows)):
    kids = three.tree.children[b, 0][three.tree.children[b, 0] >= 0]
    old = kids[np.isin(kids, old_kids[b])]
    new = kids[~np.isin(kids, old_kids[b])]
    np.testing.assert_array_equal(three.tree.visits[b, old],
                                  np.asarray(two.tree.visits)[b, old])
    if len(new):
      assert three.tree.visits[b, new].sum() == 1
      rolled_out_from_new += 1
  assert rolled_out_from_new > len(rows) // 2
  assert np.all(np.asarray(widened(8).expansions[:, 0]) == 2)
  assert np.all(np.asarray(widened(9).expansions[:, 0]) == 3)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=4),
                min_size=3, max_size=3),
       st.sampled_from([1, 2]), st.integers(0, 3))
def test_widened_trees_stay_search_trees(rows, widen_visits, seed):
  """Widening keeps the invariants: children distinct steps, at most
  max_expansions expansions, visits and values consistent, and more nodes
  than the search without it."""
  config = _widening(widen_visits, num_iterations=16)
  result = _run_keyed(rows, config, seed)
  expansions = np.asarray(result.expansions)
  _check_invariants(result, config, expansions)
  t = jax.tree.map(np.asarray, result.tree)
  assert np.all(expansions <= config.max_expansions)
  for b in range(3):
    for p in range(int(t.num_nodes[b])):
      kids = t.children[b, p][t.children[b, p] >= 0]
      steps = {tuple(t.step_tokens[b, k, :t.step_len[b, k]]) for k in kids}
      assert len(steps) == len(kids)
  assert np.all(result.iterations == config.num_iterations)
  unwidened = _run_keyed(rows, dataclasses.replace(config, widen_visits=0),
                         seed)
  assert np.sum(expansions[:, 0]) > np.sum(unwidened.expansions[:, 0])


def test_the_end_gate_takes_leaves_only_while_widening():
  """A node stopped at to be widened is no leaf: however high its children
  raised its value, the gate passes only at a leaf."""
  rows = [[i, 3 * i + 2] for i in range(1, 33)]
  config = _widening(1, stop_at_end_gate=True, end_gate=0.6)
  result = jax.tree.map(np.asarray, _run_keyed(rows, config))
  passed = np.nonzero(result.passed_gate)[0]
  assert len(passed) > len(rows) // 2
  answer = result.answer_node[passed]
  assert np.all(result.tree.children[passed, answer] < 0)
  assert np.all(result.tree.value[passed, answer] >= config.end_gate)


@functools.partial(jax.jit, static_argnames="config")
def _unfinished_search(questions, lengths, keys, config):
  """`_keyed_search` with a policy that never finishes a solution."""
  keyed = _keyed_models()
  def policy_fn(*args):
    return keyed.policy_fn(*args).replace(is_final=jnp.zeros(
        args[2].shape[0], bool))
  return mcts_star.search(mcts_star.TokenModels(policy_fn, keyed.value_fn),
                          questions, lengths, keys, config)


def test_widening_after_a_final_node_waits_for_one():
  """widen_after_final: with no solution ever finished the search is the one
  without widening; with finished solutions it widens, only above them."""
  rows = [[i, 2 * i + 1] for i in range(1, 17)]
  config = _widening(2, num_iterations=16, widen_after_final=True)
  q, ql = _questions(rows)
  keys = jax.random.split(jax.random.key(0), len(rows))
  plain = _unfinished_search(q, ql, keys,
                             dataclasses.replace(config, widen_visits=0,
                                                 widen_after_final=False))
  gated = _unfinished_search(q, ql, keys, config)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(gated)):
    np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(_unfinished_search(
      q, ql, keys, dataclasses.replace(config, widen_after_final=False)
  ).expansions[:, 0]) > 1)  # ungated, it widens

  result = jax.tree.map(np.asarray, _run_keyed(rows, config))
  _check_invariants(result, config, result.expansions)
  below = np.asarray(jax.vmap(
      lambda t: mcts_star.finished_below(t, config.max_depth))(result.tree))
  widened = result.expansions[:, 0] > 1
  assert np.any(widened) and np.all(below[widened, 0])


def test_widening_needs_expansions_to_spare():
  with pytest.raises(ValueError, match="widen_visits=2 .*max_expansions"):
    mcts_star.MCTSConfig(widen_visits=2)
  with pytest.raises(ValueError, match="widen_after_final .*widen_visits"):
    mcts_star.MCTSConfig(widen_after_final=True)
  with pytest.raises(ValueError, match="widen_visits=-1"):
    mcts_star.MCTSConfig(widen_visits=-1, max_expansions=2,
                         skip_exhausted=True)
