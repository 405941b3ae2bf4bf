"""Two processes on loopback (CPU collectives) run one self-training job over
a global mesh and end with the metrics of one process with as many devices:
each process searching on its own devices, and both searching together on a
block of devices that spans them (a model too large for one host).

The task (`sums_task`) is one the tiny model learns in its warm start, so the
search finds correct solutions and both models train on data gathered from
both processes.
"""

import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tests import sums_task

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(tmp, devices):
  return dict(os.environ,
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _main(workdir, env, data, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "restmcts_jax.main", "--config=configs/tiny.py",
       *sums_task.flags(data), *extra,
       "--workdir", str(workdir)], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _metrics(workdir):
  return [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]


def _one_and_two_processes(tmp_path, devices, *extra, timeout=900):
  """Runs the sums task in one process with `devices` devices and in two
  processes with half as many each; returns both workdirs and the two
  processes' output."""
  data = sums_task.write_data(tmp_path / "sums.jsonl")
  single = _main(tmp_path / "one_process", _env(tmp_path, devices), data,
                 *extra)
  out, _ = single.communicate(timeout=timeout)
  assert single.returncode == 0, out

  port = _free_port()
  workdir = tmp_path / "two_processes"  # shared, as a GCS bucket would be
  processes = [
      _main(workdir, _env(tmp_path, devices // 2), data, *extra,
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
            f"--process_id={i}") for i in range(2)]
  outs = [p.communicate(timeout=timeout)[0] for p in processes]
  for p, out in zip(processes, outs):
    assert p.returncode == 0, out
  metrics = _metrics(tmp_path / "one_process")
  # Both models trained on searched data: there is something to compare.
  assert metrics[1]["traces"] > 0 and metrics[1]["value_records"] > 0
  return metrics, _metrics(workdir), workdir, outs


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path):
  metrics, two, workdir, outs = _one_and_two_processes(tmp_path, 2)
  assert two == metrics
  # Only process 0 prints and writes the results.
  table = "Accuracy % per iteration"
  assert table in outs[0] and table not in outs[1]
  assert (workdir / "plots" / "accuracy_per_iteration.png").is_file()


@pytest.mark.slow
def test_a_search_block_spanning_two_processes_matches_one_process(tmp_path):
  """fsdp x tensor = 2 x 2 over two processes of 2 devices each: both search
  every question together on one block, and each question's rows count
  once."""
  metrics, spanning, _, _ = _one_and_two_processes(
      tmp_path, 4, "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
  assert len(spanning) == len(metrics)
  for a, b in zip(metrics, spanning):
    assert a.keys() == b.keys()
    for key, value in a.items():
      # Losses: the same program, its all-reduces summed in another order.
      if isinstance(value, float) and "loss" in key:
        assert math.isclose(value, b[key], rel_tol=1e-3), key
      else:
        assert value == b[key], key
