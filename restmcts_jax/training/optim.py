"""The optimizer: AdamW with linear warm-up and cosine decay, global-norm
gradient clipping, and optional gradient accumulation."""

import dataclasses

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


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """AdamW + warm-up/cosine schedule + clipping (+ accumulation)."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(config.total_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * config.end_fraction)
  parts = [optax.adamw(schedule, weight_decay=config.weight_decay)]
  if config.clip_norm:
    parts.insert(0, optax.clip_by_global_norm(config.clip_norm))
  tx = optax.chain(*parts)
  if config.accumulation_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.accumulation_steps)
  return tx
