"""Checkpoints of the self-training state, through orbax.

A checkpoint has three parts:
  * `state`   — fixed-shape arrays (e.g. both models' parameters), restored
                onto whatever shardings the caller asks for, so a run can
                resume on a different mesh;
  * `buffers` — data whose size changes (value records, traces), restored as
                saved, as numpy arrays;
  * `meta`    — JSON (iteration, phase, ...).
orbax writes each checkpoint to a temporary folder and renames it when
complete, so a process killed mid-save leaves the previous checkpoint as the
latest one; only the last `max_to_keep` are kept.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from restmcts_jax import paths


def abstract_like(tree, shardings=None):
  """`ShapeDtypeStruct`s of `tree`'s arrays, with `shardings` (a matching
  tree of `Sharding`s) if given: the target layout of a restore."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
      shardings)


class Checkpointer:
  """Saves and restores `(state, buffers, meta)` under `directory/<step>`."""

  def __init__(self, directory: str | os.PathLike[str], *,
               max_to_keep: int = 3):
    # Local folders absolute (orbax asks for it); URLs (gs://...) as given.
    self.directory = (epath.Path(directory) if paths.is_url(directory)
                      else epath.Path(os.path.abspath(directory)))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def save(self, step: int, state, buffers, meta: dict[str, Any]) -> None:
    """Writes checkpoint `step` and waits until it is complete."""
    items = dict(state=ocp.args.StandardSave(state),
                 meta=ocp.args.JsonSave(meta))
    if jax.tree.leaves(buffers):  # orbax refuses empty items
      items["buffers"] = ocp.args.StandardSave(buffers)
    self._manager.save(step, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, like, step: int | None = None):
    """Restores `(state, buffers, meta)`.

    Args:
      like: abstract state (`abstract_like`), giving each array's shape,
        dtype and target sharding.
      step: which checkpoint; the latest by default.

    Raises:
      FileNotFoundError: naming the directory, when it holds no complete
        checkpoint (or not `step`).
    """
    step = self._complete_step(step)
    items = dict(state=ocp.args.StandardRestore(like),
                 meta=ocp.args.JsonRestore())
    has_buffers = (self.directory / str(step) / "buffers").is_dir()
    if has_buffers:
      items["buffers"] = ocp.args.StandardRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    return out.state, (out.buffers if has_buffers else {}), out.meta

  def _complete_step(self, step: int | None) -> int:
    """`step`, or the latest; FileNotFoundError unless it is complete."""
    steps = self.all_steps()
    step = self.latest_step() if step is None else step
    if step is None or step not in steps:
      raise FileNotFoundError(
          f"no complete checkpoint {'' if step is None else step} in "
          f"{self.directory} (found: {steps or 'none'})")
    return step

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON meta of checkpoint `step` (the latest by default), without
    reading any array."""
    out = self._manager.restore(
        self._complete_step(step),
        args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out.meta

  def read_buffers(self, step: int | None = None) -> dict[str, np.ndarray]:
    """The buffers of checkpoint `step` (the latest by default) as host
    arrays, without the state; {} where it saved none."""
    step = self._complete_step(step)
    if not (self.directory / str(step) / "buffers").is_dir():
      return {}
    out = self._manager.restore(
        step, args=ocp.args.Composite(buffers=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, dict(out.buffers))

  def close(self) -> None:
    self._manager.close()
