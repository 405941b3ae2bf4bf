"""Training steps: policy SFT on traces and value regression on targets.

  * `sft_loss`   — token NLL of the solution given the question (prompt masked);
  * `value_loss` — MSE between the sigmoid value head and the targets v.
`make_train_step` turns either into one jitted optimizer step over an explicit
`TrainState`, with in/out shardings on a mesh from the logical axis rules
(`training/sharding.py`); without a mesh it runs on one device.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from restmcts_jax.training import sharding

Array = jax.Array


@struct.dataclass
class TrainState:
  """Parameters, optimizer state and the optimizer-step count."""

  params: nnx.State
  opt_state: optax.OptState
  step: Array


@struct.dataclass
class SFTBatch:
  """`tokens [B, T]` question + solution, right-padded; `lengths [B]`;
  `prompt_len [B]`: the solution starts there. Padding rows have length 0."""

  tokens: Array
  lengths: Array
  prompt_len: Array


@struct.dataclass
class ValueBatch:
  """`tokens [B, T]` question + partial solution; `lengths [B]`;
  `target [B]` the value to regress on; `weight [B]` 0 for padding rows."""

  tokens: Array
  lengths: Array
  target: Array
  weight: Array


def sft_loss(model, batch: SFTBatch) -> tuple[Array, dict[str, Array]]:
  """Mean NLL of the solution tokens (position t predicts token t + 1)."""
  inputs = batch.tokens[:, :-1]
  logits, _, _ = model(inputs, jnp.broadcast_to(jnp.arange(inputs.shape[1]),
                                                inputs.shape))
  targets = batch.tokens[:, 1:]
  position = jnp.arange(1, batch.tokens.shape[1])[None]
  mask = (position >= batch.prompt_len[:, None]) & (
      position < batch.lengths[:, None])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = jnp.sum(mask)
  loss = jnp.sum(nll * mask) / jnp.maximum(count, 1)
  return loss, dict(loss=loss, tokens=count)


def _weighted_mean(x: Array, weight: Array) -> Array:
  """`sum(x * weight) / sum(weight)` (0 for an all-padding batch)."""
  return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1e-9)


def value_loss(value_model, batch: ValueBatch
               ) -> tuple[Array, dict[str, Array]]:
  """Weighted MSE between predicted values and the targets (SPEC)."""
  values = value_model(batch.tokens, jnp.maximum(batch.lengths, 1))
  loss = _weighted_mean((values - batch.target) ** 2, batch.weight)
  return loss, dict(loss=loss, rows=jnp.sum(batch.weight))


def value_cross_entropy_loss(value_model, batch: ValueBatch
                             ) -> tuple[Array, dict[str, Array]]:
  """Weighted cross-entropy of the sigmoid values against the targets as
  soft labels, less the targets' own entropy (0 at a perfect fit).

  Its minimum is MSE's (a position's mean target). Its gradient on the
  head's logit is `value - target`; MSE's is that times `2 value (1 -
  value)`, which weighs rows whose values sit near 0 or 1 less than the
  others (AdamW undoes a common scale, not a per-row one). The reference's
  head has no sigmoid, so its MSE weighs every row alike.
  """
  logits = value_model.logits(batch.tokens, jnp.maximum(batch.lengths, 1))
  target = batch.target
  cross = optax.sigmoid_binary_cross_entropy(logits, target)
  entropy = -(jax.scipy.special.xlogy(target, target) +
              jax.scipy.special.xlogy(1 - target, 1 - target))
  loss = _weighted_mean(cross - entropy, batch.weight)
  return loss, dict(loss=loss, rows=jnp.sum(batch.weight))


# `config.train.value_loss` -> the loss every value-training phase uses.
VALUE_LOSSES = dict(mse=value_loss, cross_entropy=value_cross_entropy_loss)


def state_shardings(state: TrainState, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh) -> TrainState:
  """NamedShardings of a `TrainState` under the active logical rules: the
  optimizer's per-parameter moments follow their parameters."""
  params = nnx.get_named_sharding(state.params, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_state = optax.tree_map_params(
      tx, lambda _, s: s, state.opt_state, params,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return TrainState(params=params, opt_state=opt_state, step=replicated)


def batch_shardings(batch, mesh: jax.sharding.Mesh):
  """Every batch field sharded over its first (`batch`) axis."""
  return jax.tree.map(
      lambda x: sharding.named(mesh, ("batch",) + (None,) * (x.ndim - 1)),
      batch)


def init_state(params: nnx.State, tx: optax.GradientTransformation
               ) -> TrainState:
  """A fresh `TrainState` (optimizer moments at zero)."""
  return TrainState(params=params, opt_state=tx.init(params),
                    step=jnp.zeros((), jnp.int32))


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    *,
    shardings: tuple | None = None,
):
  """One jitted optimizer step `(state, batch) -> (state, metrics)`.

  Args:
    graphdef: the model's graph (`nnx.split(model)`).
    loss_fn: `(model, batch) -> (loss, metrics)`, e.g. `sft_loss`.
    tx: the optimizer.
    shardings: `(state shardings, batch shardings)` on a mesh, or None for
      one device. The state is donated.
  """
  def step(state: TrainState, batch):
    def loss(params):
      return loss_fn(nnx.merge(graphdef, params), batch)
    (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return TrainState(params, opt_state, state.step + 1), metrics

  if shardings is None:
    return jax.jit(step, donate_argnums=0)
  state_sh, batch_sh = shardings
  replicated = NamedSharding(jax.tree.leaves(batch_sh)[0].mesh,
                             PartitionSpec())
  return jax.jit(step, in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, replicated), donate_argnums=0)
