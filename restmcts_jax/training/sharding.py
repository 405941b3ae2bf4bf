"""Logical axis names → mesh axes, in one place.

Model code names the axes of every parameter and of the main activations with
logical names (`'embed'`, `'heads'`, ...). A rules table maps each logical
name to a mesh axis (or None: replicated). Outside a mesh everything here is a
no-op, so the same model code runs on one CPU and on a pod slice.
"""

from collections.abc import Sequence

import jax
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec

LogicalNames = Sequence[str | None]

# Every logical name the model uses; a rules table must cover all of them.
LOGICAL_AXES = (
    "batch",
    "length",
    "vocab",
    "embed",
    "heads",
    "kv_heads",
    "head_dim",
    "mlp",
)


def mesh_is_set() -> bool:
  """True inside `jax.set_mesh(...)` (an abstract mesh with axes)."""
  return not jax.sharding.get_abstract_mesh().empty


def logical_to_spec(names: LogicalNames) -> PartitionSpec:
  """Maps logical axis names to a `PartitionSpec` through the active rules
  (the same mapping flax applies to annotated parameters)."""
  return flax_spmd.get_pspec(PartitionSpec(*names))


def place(x: jax.Array, names: LogicalNames) -> jax.Array:
  """Puts a concrete array on the active mesh by logical names; off-mesh,
  returns it unchanged."""
  if not mesh_is_set():
    return x
  return jax.device_put(x, logical_to_spec(names))


def constrain(x: jax.Array, names: LogicalNames) -> jax.Array:
  """Constrains an activation's sharding by logical names; no-op off-mesh."""
  if not mesh_is_set() or not flax_spmd.get_logical_axis_rules():
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def complete_rules(
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]],
) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Adds `(name, None)` for every logical axis the rules leave out.

  Flax keeps an unknown logical name as-is (and then fails to find it on the
  mesh), so the table handed to `nnx.logical_axis_rules` must be complete.
  """
  given = {name for name, _ in rules}
  return tuple(rules) + tuple((n, None) for n in LOGICAL_AXES if n not in given)


MESH_AXES = ("data", "fsdp", "tensor")

# Batch over data x fsdp; parameters over fsdp (embed) and tensor (the rest).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
)


def make_mesh(shape: Sequence[int], axes: Sequence[str] = MESH_AXES
              ) -> jax.sharding.Mesh:
  """A device mesh with Auto axes (sharding follows the logical rules and
  `with_sharding_constraint`; jax 0.10 defaults to Explicit)."""
  auto = (jax.sharding.AxisType.Auto,) * len(axes)
  return jax.make_mesh(tuple(shape), tuple(axes), axis_types=auto)


def named(mesh: jax.sharding.Mesh, names: LogicalNames
          ) -> jax.sharding.NamedSharding:
  """`NamedSharding` of logical names under the active rules."""
  return jax.sharding.NamedSharding(mesh, logical_to_spec(names))
