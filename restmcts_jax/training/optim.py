"""The optimizer: AdamW with linear warm-up and cosine decay, global-norm
gradient clipping, and optional gradient accumulation."""

import dataclasses

import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Attributes:
    learning_rate: peak learning rate.
    warmup_steps: linear warm-up from 0 to the peak (optimizer updates).
    total_steps: length of the schedule (optimizer updates).
    end_fraction: final learning rate as a fraction of the peak.
    weight_decay: AdamW decoupled weight decay.
    clip_norm: global gradient-norm clip (0: off).
    accumulation_steps: micro-batches whose gradients are averaged per update.
  """

  learning_rate: float = 3e-4
  warmup_steps: int = 10
  total_steps: int = 1000
  end_fraction: float = 0.1
  weight_decay: float = 0.01
  clip_norm: float = 1.0
  accumulation_steps: int = 1

  @classmethod
  def for_phase(cls, learning_rate: float, num_steps: int
                ) -> "OptimizerConfig":
    """A training phase of `num_steps` updates, as the loop runs each one:
    a fresh schedule warming up from 0 over 10 of them (all of a shorter
    phase, whose first update then changes nothing) and decaying to
    `end_fraction` of the peak over the rest."""
    return cls(learning_rate=learning_rate,
               warmup_steps=min(10, num_steps),
               total_steps=max(num_steps, 1))


def warmup_cosine(count, peak, warmup, decay, end):
  """`optax.warmup_cosine_decay_schedule(0, peak, warmup, decay, end)` at
  step `count`, with every argument an array: the schedule's numbers are
  then inputs of the compiled step, not constants in it, so one program
  serves every training call (warm start and each iteration) of a shape."""
  count = jnp.asarray(count, jnp.float32)
  warmup = jnp.asarray(warmup, jnp.float32)
  linear = peak * jnp.minimum(count, warmup) / jnp.maximum(warmup, 1.0)
  span = jnp.asarray(decay, jnp.float32) - warmup
  cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(count - warmup, span)
                                / span))
  decayed = (peak - end) * cosine + end
  return jnp.where(count < warmup, linear, decayed)


@optax.inject_hyperparams
def _adamw(peak, warmup, decay, end, weight_decay):
  return optax.adamw(lambda count: warmup_cosine(count, peak, warmup, decay,
                                                 end),
                     weight_decay=weight_decay)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """AdamW + warm-up/cosine schedule + clipping (+ accumulation). The
  schedule's settings live in the optimizer state (see `warmup_cosine`)."""
  parts = [_adamw(peak=config.learning_rate,
                  warmup=config.warmup_steps,
                  decay=max(config.total_steps, config.warmup_steps + 1),
                  end=config.learning_rate * config.end_fraction,
                  weight_decay=config.weight_decay)]
  if config.clip_norm:
    parts.insert(0, optax.clip_by_global_norm(config.clip_norm))
  tx = optax.chain(*parts)
  if config.accumulation_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.accumulation_steps)
  return tx
