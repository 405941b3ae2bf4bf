"""Test set-up: 8 simulated CPU devices, so sharded and single-device runs
can be compared in the same process."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the test run, its two worker processes,
# the command lines tests start and the slow suite after it: the same small
# programs (a tiny model's steps, its searches) compile in many tests. A test
# of the cache itself names its own folder.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ".pytest_cache", "xla"))


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
