"""Test set-up: 8 simulated CPU devices, so sharded and single-device runs
can be compared in the same process."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
