"""Training steps: losses by hand, learning, gradient accumulation, and the
same step on 8 simulated devices under three mesh shapes as on one."""

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st
from flax import nnx

from restmcts_jax.models import transformer as tl
from restmcts_jax.models import value_head
from restmcts_jax.training import optim
from restmcts_jax.training import sharding
from restmcts_jax.training import steps

# Every sharded dimension divisible by 8.
CONFIG = tl.TransformerConfig(vocab_size=64, embed_dim=32, num_layers=2,
                              num_heads=8, num_kv_heads=8, head_dim=4,
                              mlp_dim=64)
OPT = optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=2,
                            total_steps=20)


def _sft_batch(seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (8, 12), 1, 64)
  lengths = jnp.array([12, 10, 7, 12, 9, 11, 12, 8])
  tokens = jnp.where(jnp.arange(12) < lengths[:, None], tokens, 0)
  return steps.SFTBatch(tokens=tokens, lengths=lengths,
                        prompt_len=jnp.array([4, 3, 5, 2, 4, 6, 1, 3]))


def _value_batch(seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (8, 10), 1, 64)
  return steps.ValueBatch(
      tokens=tokens, lengths=jnp.array([10, 4, 7, 9, 10, 3, 5, 8]),
      target=jnp.linspace(0.0, 1.0, 8),
      weight=jnp.array([1, 1, 1, 1, 1, 1, 0, 1], jnp.float32))


def _value_model(seed=0):
  policy = tl.Transformer(CONFIG, rngs=nnx.Rngs(seed))
  vm = value_head.make_value_model(policy, share_backbone=True,
                                   rngs=nnx.Rngs(seed))
  vm.head.kernel.set_value(0.3 * jnp.ones((CONFIG.embed_dim,)))
  return vm


def test_sft_loss_is_the_mean_nll_of_solution_tokens_only():
  model = tl.Transformer(CONFIG, rngs=nnx.Rngs(0))
  batch = _sft_batch()
  loss, metrics = steps.sft_loss(model, batch)
  logits = np.asarray(model(batch.tokens, tl.default_positions(
      batch.tokens))[0])
  nll = []
  for b in range(8):
    for t in range(int(batch.prompt_len[b]), int(batch.lengths[b])):
      logp = logits[b, t - 1] - np.log(np.exp(logits[b, t - 1]).sum())
      nll.append(-logp[int(batch.tokens[b, t])])
  assert int(metrics["tokens"]) == len(nll)
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)


def test_value_loss_is_weighted_mse():
  vm = _value_model()
  batch = _value_batch()
  loss, _ = steps.value_loss(vm, batch)
  values = np.asarray(vm(batch.tokens, batch.lengths))
  w = np.asarray(batch.weight)
  want = (w * (values - np.asarray(batch.target)) ** 2).sum() / w.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_value_cross_entropy_by_hand_and_zero_at_the_targets():
  vm = _value_model()
  batch = _value_batch()
  loss, metrics = steps.value_cross_entropy_loss(vm, batch)
  v = np.asarray(vm(batch.tokens, batch.lengths), np.float64)
  t, w = np.asarray(batch.target, np.float64), np.asarray(batch.weight)
  xlogy = lambda x, y: np.where(x > 0, x * np.log(np.where(x > 0, y, 1)), 0)
  per_row = (-(t * np.log(v) + (1 - t) * np.log(1 - v))
             + xlogy(t, t) + xlogy(1 - t, 1 - t))
  np.testing.assert_allclose(loss, (w * per_row).sum() / w.sum(), rtol=1e-5)
  assert metrics["loss"] == loss
  # A model whose values are the targets scores 0 (up to the clipped ends).
  fitted = _LogitModel(jax.scipy.special.logit(
      jnp.clip(batch.target, 1e-7, 1 - 1e-7)))
  fit_loss, _ = steps.value_cross_entropy_loss(fitted, batch)
  assert abs(float(fit_loss)) < 1e-5


class _LogitModel:
  """A value model that gives fixed logits to a batch, whatever its rows."""

  def __init__(self, logits):
    self._logits = logits

  def logits(self, tokens, lengths):
    del tokens, lengths
    return self._logits

  def __call__(self, tokens, lengths):
    return jax.nn.sigmoid(self._logits)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    logits=st.lists(st.floats(-6, 6), min_size=4, max_size=4),
    targets=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1 / 9]),
                     min_size=4, max_size=4))
def test_value_losses_pull_the_logit_by_error_and_by_error_times_slope(
    logits, targets):
  """Cross-entropy moves a logit by `value - target` (mean over rows); MSE
  by that times `2 value (1 - value)`, which vanishes as values near 0."""
  logits, target = jnp.array(logits), jnp.array(targets)
  batch = steps.ValueBatch(tokens=jnp.zeros((4, 1), jnp.int32),
                           lengths=jnp.ones(4, jnp.int32), target=target,
                           weight=jnp.ones(4))
  grad = lambda loss_fn: jax.grad(
      lambda z: loss_fn(_LogitModel(z), batch)[0])(logits)
  v = jax.nn.sigmoid(logits)
  np.testing.assert_allclose(grad(steps.value_cross_entropy_loss),
                             (v - target) / 4, atol=1e-6)
  np.testing.assert_allclose(grad(steps.value_loss),
                             (v - target) * 2 * v * (1 - v) / 4, atol=1e-6)


def test_steps_reduce_the_loss_on_a_fixed_batch():
  for make, loss_fn, batch in [
      (lambda: tl.Transformer(CONFIG, rngs=nnx.Rngs(0)), steps.sft_loss,
       _sft_batch()),
      (_value_model, steps.value_loss, _value_batch()),
      (_value_model, steps.value_cross_entropy_loss, _value_batch())]:
    graphdef, params = nnx.split(make())
    tx = optim.make_optimizer(OPT)
    step = steps.make_train_step(graphdef, loss_fn, tx)
    state = steps.init_state(params, tx)
    losses = []
    for _ in range(12):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(state.step) == 12


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
  # Equal weights: the whole batch's mean is the mean of the halves' means.
  batch = _value_batch().replace(weight=jnp.ones(8))
  halves = [jax.tree.map(lambda x: x[:4], batch),
            jax.tree.map(lambda x: x[4:], batch)]
  graphdef, params = nnx.split(_value_model())
  whole_tx = optim.make_optimizer(OPT)
  whole = steps.make_train_step(graphdef, steps.value_loss, whole_tx)(
      steps.init_state(params, whole_tx), batch)[0]
  accum_tx = optim.make_optimizer(
      optim.OptimizerConfig(**{**OPT.__dict__, "accumulation_steps": 2}))
  step = steps.make_train_step(graphdef, steps.value_loss, accum_tx)
  state = steps.init_state(nnx.split(_value_model())[1], accum_tx)
  state, _ = step(state, halves[0])
  state, _ = step(state, halves[1])
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def _sharded_step(mesh_shape, make, loss_fn, batch):
  tx = optim.make_optimizer(OPT)
  mesh = sharding.make_mesh(mesh_shape)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(
      sharding.complete_rules(sharding.DEFAULT_RULES)):
    graphdef, params = nnx.split(make())
    state = steps.init_state(params, tx)
    shardings = (steps.state_shardings(state, tx, mesh),
                 steps.batch_shardings(batch, mesh))
    step = steps.make_train_step(graphdef, loss_fn, tx, shardings=shardings)
    state = jax.device_put(state, shardings[0])
    batch = jax.device_put(batch, shardings[1])
    compiled = step.lower(state, batch).compile()
    new_state, metrics = step(state, batch)
  return new_state, metrics, compiled.memory_analysis()


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 8, 1)])
@pytest.mark.parametrize("kind", ["sft", "value"])
def test_sharded_step_equals_single_device(mesh_shape, kind):
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  make, loss_fn, batch = {
      "sft": (lambda: tl.Transformer(CONFIG, rngs=nnx.Rngs(0)),
              steps.sft_loss, _sft_batch()),
      "value": (_value_model, steps.value_loss, _value_batch()),
  }[kind]
  tx = optim.make_optimizer(OPT)
  graphdef, params = nnx.split(make())
  want, want_metrics = steps.make_train_step(graphdef, loss_fn, tx)(
      steps.init_state(params, tx), batch)
  got, metrics, _ = _sharded_step(mesh_shape, make, loss_fn, batch)
  np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fsdp_lowers_parameter_bytes_per_device():
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  make = lambda: tl.Transformer(CONFIG, rngs=nnx.Rngs(0))
  args = [(_sharded_step(shape, make, steps.sft_loss, _sft_batch())[2]
           ).argument_size_in_bytes for shape in [(8, 1, 1), (2, 4, 1),
                                                  (1, 8, 1)]]
  assert args[0] > args[1] > args[2], args


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    peak=st.floats(1e-6, 1.0), warmup=st.integers(0, 30),
    total=st.integers(0, 300), end_fraction=st.floats(0.0, 1.0),
    count=st.integers(0, 400))
def test_the_traced_schedule_is_optax_warmup_cosine(peak, warmup, total,
                                                    end_fraction, count):
  decay = max(total, warmup + 1)  # as make_optimizer
  expected = optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup, decay, peak * end_fraction)(count)
  got = optim.warmup_cosine(jnp.int32(count), jnp.float32(peak),
                            jnp.int32(warmup), jnp.int32(decay),
                            jnp.float32(peak * end_fraction))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * peak)


@pytest.mark.parametrize("num_steps, rates", [
    (100, {0: 0.0, 5: 1.0, 10: 2.0, 55: 1.1, 100: 0.2}),  # 10 up, 90 down to
                                                          # a tenth
    (3, {0: 0.0, 1: 2 / 3, 3: 2.0}),  # all warm-up
])
def test_a_phase_warms_up_over_at_most_ten_updates_then_decays(num_steps,
                                                              rates):
  config = optim.OptimizerConfig.for_phase(2.0, num_steps)
  tx = optim.make_optimizer(config)
  hyper = tx.init({"w": jnp.zeros(())})[1].hyperparams
  schedule = [hyper[k] for k in ("peak", "warmup", "decay", "end")]
  for count, rate in rates.items():
    np.testing.assert_allclose(optim.warmup_cosine(count, *schedule), rate,
                               rtol=1e-5, atol=1e-6)


def test_one_compiled_step_serves_every_schedule():
  graphdef, params = nnx.split(tl.Transformer(CONFIG, rngs=nnx.Rngs(0)))
  texts, updates = [], []
  for config in (OPT, optim.OptimizerConfig(learning_rate=3e-5,
                                            warmup_steps=7, total_steps=200)):
    tx = optim.make_optimizer(config)
    step = steps.make_train_step(graphdef, steps.sft_loss, tx)
    state = steps.init_state(jax.tree.map(jnp.copy, params), tx)
    texts.append(step.lower(state, _sft_batch()).as_text())
    for _ in range(3):
      state, _ = step(state, _sft_batch())
    # The learning rate of the third update, read back from the state.
    updates.append(optim.warmup_cosine(
        2, *[state.opt_state[1].hyperparams[k]
             for k in ("peak", "warmup", "decay", "end")]))
  assert texts[0] == texts[1]
  np.testing.assert_allclose(updates, [1e-2, 3e-5 * 2 / 7], rtol=1e-6)


def test_a_step_built_for_one_schedule_trains_any_other_alike():
  """The loop reuses one jitted step for every training call: the schedule
  comes from the state it is given, not from the optimizer it was built
  with."""
  graphdef, params = nnx.split(tl.Transformer(CONFIG, rngs=nnx.Rngs(0)))
  other = optim.make_optimizer(optim.OptimizerConfig(
      learning_rate=3e-5, warmup_steps=2, total_steps=5))
  results = []
  for built_with in (optim.make_optimizer(OPT), other):
    step = steps.make_train_step(graphdef, steps.sft_loss, built_with)
    state = steps.init_state(jax.tree.map(jnp.copy, params), other)
    for _ in range(4):
      state, _ = step(state, _sft_batch())
    results.append(state.params)
  jax.tree.map(np.testing.assert_array_equal, *results)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       results[0], params)
  assert max(jax.tree.leaves(moved)) > 0
