"""Test set-up: 8 simulated CPU devices, so sharded and single-device runs
can be compared in the same process."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
  """Drops each module's compiled executables once it is done.

  Every XLA:CPU executable holds about fifteen memory mappings for its code
  while a jit cache keeps it; over the whole suite in one process they pass
  Linux's default `vm.max_map_count` (65530), and the next compilation dies
  of SIGSEGV or SIGABRT, in whichever test happens to be compiling.
  """
  yield
  jax.clear_caches()
  gc.collect()
