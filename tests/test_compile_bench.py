"""bench/compile.py: a row per dtype and length, and the cached call."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tiny_model_rows_and_a_cached_call_faster_than_compiling(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run(
      [sys.executable, "bench/compile.py", "--model=tiny", "--lengths=16,32",
       "--steps=2", "--dtypes=float32,bfloat16",
       f"--cache_dir={tmp_path / 'xla'}"],
      cwd=ROOT, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  full = tmp_path / "full"
  full.mkdir()
  (full / "program").write_text("")
  refused = subprocess.run(
      [sys.executable, "bench/compile.py", "--model=tiny", "--lengths=16",
       f"--cache_dir={full}"], cwd=ROOT, env=env, capture_output=True,
      text=True)
  assert refused.returncode != 0 and "is not empty" in refused.stderr
  # `--cache_dir=`: a temporary cache, gone when the benchmark ends.
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  temporary = subprocess.run(
      [sys.executable, "bench/compile.py", "--model=tiny", "--lengths=16",
       "--steps=1", "--cache_dir="], cwd=ROOT,
      env=dict(env, TMPDIR=str(scratch)), capture_output=True, text=True)
  assert temporary.returncode == 0, temporary.stderr[-3000:]
  assert "RESULT cache_speedup_float32_16" in temporary.stdout
  assert not list(scratch.glob("xla_*"))
  rows = [line.split("|") for line in run.stdout.splitlines()
          if re.match(r"\s*(float32|bfloat16) \|", line)]
  assert [(r[0].strip(), int(r[1])) for r in rows] == [
      ("float32", 16), ("float32", 32), ("bfloat16", 16), ("bfloat16", 32)]
  for r in rows:
    first, compiled, cached = map(float, r[2:5])
    assert 0 < compiled <= first
    # The bench stops unless JAX reported a persistent-cache hit for it.
    assert cached < first
  assert any((tmp_path / "xla").iterdir())
  results = dict(line.split()[1:] for line in run.stdout.splitlines()
                 if line.startswith("RESULT "))
  assert set(results) == {f"{k}_{d}_{n}" for k in ("compile_in_steps",
                                                   "cache_speedup")
                          for d in ("float32", "bfloat16") for n in (16, 32)}
  assert all(float(v) > 1 for k, v in results.items()
             if k.startswith("cache_speedup"))
