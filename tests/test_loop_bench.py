"""bench/loop.py: phase rows with throughput from the loop's metrics, and a
run on a random tiny checkpoint end to end."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from configs import gsm8k_qwen2

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "gsm8k_train_sample.jsonl"
_spec = importlib.util.spec_from_file_location("bench_loop",
                                               ROOT / "bench" / "loop.py")
loop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loop)


def test_throughput_counts_steps_tokens_and_questions_net_of_compiling():
  config = gsm8k_qwen2.get_config("unused")
  config.search_questions = 32
  config.warmstart.update(steps=20, value_steps=10)
  config.train.update(policy_steps=7, value_steps=5)
  warm = dict(iteration=0, warmstart_loss=None, warmstart_value_loss=0.2)
  collected = dict(search_policy_tokens=100.0)
  trained = dict(collected, value_loss=0.1, policy_loss=None)
  row = dict(trained, iteration=1, tokens_greedy=48.0, tokens_mcts=117.4)
  phases = [loop.Phase("warmstart", 0, 12.0, 2.0, 3, 1.5, warm),
            loop.Phase("eval", 0, 4.0, 5.0, 2, 1.5, warm),
            loop.Phase("collect", 1, 9.0, 1.0, 2, 2.0, collected),
            loop.Phase("train", 1, 3.0, 0.5, 1, 2.0, trained),
            loop.Phase("eval", 1, 4.0, 0.0, 0, 2.0, row)]
  loop.add_throughput(phases, config, num_train=20)
  # Only the value model trained in the warm start (10 steps in 10 s) and
  # in iteration 1 (5 steps in 2.5 s); 20 questions (fewer than 32) x 100
  # tokens in 8 s.
  assert phases[0].throughput == "10 AdamW steps, 1.00/s"
  assert phases[2].throughput == ("2,000 policy tokens, 250.00/s; "
                                  "20 questions, 2.50/s")
  assert phases[3].throughput == "5 AdamW steps, 2.00/s"
  assert phases[4].throughput == ("policy tokens per question: greedy 48, "
                                  "mcts 117")
  lines = loop.table(phases).splitlines()
  assert len(lines) == 2 + len(phases)
  assert [f.strip() for f in lines[4].split("|")] == [
      "collect", "1", "9.0", "1.0", "2", "2.00", phases[2].throughput]
  # No rate where compiling took the whole phase.
  phases = [loop.Phase("warmstart", 0, 1.0, 1.5, 3, None, warm)]
  loop.add_throughput(phases, config, num_train=20)
  assert phases[0].throughput == "10 AdamW steps, -/s"


def test_recorder_counts_the_programs_compiled_inside_each_phase():
  square = lambda x: x * x + 1.0
  with loop.PhaseRecorder() as recorder:
    jax.jit(square)(jnp.ones(3)).block_until_ready()  # before the phase
    time.sleep(0.05)
    start = time.perf_counter()
    jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones(3)).block_until_ready()
    jax.jit(lambda x: jnp.cos(x) - 2)(jnp.ones(4)).block_until_ready()
    recorder("warmstart", 0, time.perf_counter() - start, {"loss": 0.5})
    recorder("eval", 0, 0.01)
  first, second = recorder.phases
  assert first.compiles >= 2 and 0 < first.compile_seconds <= first.seconds
  assert recorder.outside_compile_seconds > 0
  assert (second.compile_seconds, second.compiles) == (0.0, 0)
  assert (first.metrics, second.metrics) == ({"loss": 0.5}, {})
  jax.jit(lambda x: x - 3.0)(jnp.ones(5)).block_until_ready()  # closed
  assert len(recorder.phases) == 2 and not recorder._events


@pytest.mark.slow
def test_a_tiny_random_checkpoint_runs_every_phase(tmp_path):
  out = tmp_path / "rows.json"
  args = ["--model=tiny", f"--data={SAMPLE}", "--tokenizer_vocab=400",
          f"--workdir={tmp_path / 'work'}", f"--json={out}",
          "--config.question_width=512", "--config.iterations=1",
          "--config.progress=False", "--config.search_questions=2",
          "--config.search_batch=2", "--config.search.num_iterations=2",
          "--config.eval.num_test=2", "--config.eval.batch_size=2",
          "--config.eval.budgets=2", "--config.eval.budget=2",
          "--config.eval.methods=greedy,mcts",
          "--config.eval.mcts_iterations=2", "--config.warmstart.steps=2",
          "--config.warmstart.value_steps=2", "--config.max_depth=2",
          "--config.sampler.max_step_len=8"]
  # One CPU device, not the suite's eight: batches of 4 split over one.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "bench/loop.py", *args], cwd=ROOT,
                       env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  printed = run.stdout
  rows = json.loads(out.read_text())
  assert [(p["name"], p["iteration"]) for p in rows["phases"]] == [
      ("warmstart", 0), ("eval", 0), ("collect", 1), ("train", 1),
      ("eval", 1)]
  # Two steps per training call that ran (D_V0 may be empty at depth 2).
  ran = sum(rows["metrics"][0].get(k) is not None
            for k in ("warmstart_loss", "warmstart_value_loss"))
  assert ran >= 1
  assert rows["phases"][0]["throughput"].startswith(f"{2 * ran} AdamW steps")
  for phase in rows["phases"]:
    assert phase["compile_seconds"] <= phase["seconds"]
  assert rows["phases"][1]["compiles"] > 0  # the evaluation's programs
  assert "policy tokens per question: greedy" in rows["phases"][-1][
      "throughput"]
  # Collect reports its own metrics as it ends, before the iteration's row.
  assert rows["phases"][2]["metrics"]["search_policy_tokens"] > 0
  assert "policy tokens" in rows["phases"][2]["throughput"]
  assert "; 2 questions, " in rows["phases"][2]["throughput"]
  assert [m["iteration"] for m in rows["metrics"]] == [0, 1]
  assert "phase |" in printed
  config = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
  assert config["model"]["hf_checkpoint"] == str(tmp_path / "work" / "model")
