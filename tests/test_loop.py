"""The self-training loop as users run it: killed anywhere or preempted, it
resumes to the same metrics; bad input stops it with a message naming the
culprit and leaves earlier results alone."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from restmcts_jax import evaluate
from restmcts_jax import evaluation
from restmcts_jax import experiment
from restmcts_jax import selftrain
from restmcts_jax.tasks import game24
from restmcts_jax.tokenizer import SentencePieceTokenizer
from restmcts_jax.training import batching
from tests import fake_gcs

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ("--config", "configs/tiny.py", "--config.iterations=1")
LAST_PHASE = len(selftrain.schedule(1)) - 1


def _env(tmp):
  # A persistent compilation cache shared by the runs of this module: a
  # resumed run compiles nothing again.
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _main(workdir, tmp, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "restmcts_jax.main", *ARGS, *extra,
       "--workdir", str(workdir)], cwd=ROOT, env=_env(tmp),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=600):
  out, _ = process.communicate(timeout=timeout)
  return process.returncode, out


def _metrics(workdir):
  return [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]


def _steps(workdir):
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").exists()
                ) if folder.is_dir() else []


def _wait_for_step(process, workdir, step, timeout=300):
  start = time.monotonic()
  while not _steps(workdir) or max(_steps(workdir)) < step:
    assert process.poll() is None, "the run ended before the awaited phase"
    assert time.monotonic() - start < timeout
    time.sleep(0.01)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("loop")


@pytest.fixture(scope="module")
def finished(tmp):
  """A tiny run (warm start + 1 iteration) that was never interrupted."""
  workdir = tmp / "uninterrupted"
  code, out = _finish(_main(workdir, tmp))
  assert code == 0, out
  (tmp / "uninterrupted.out").write_text(out)
  return workdir


def test_a_finished_run_writes_metrics_plots_trees_and_events(finished, tmp):
  metrics = _metrics(finished)
  # It ends by printing them as tables, in percent.
  out = (tmp / "uninterrupted.out").read_text()
  assert "iteration | greedy | pass@1 |" in out
  row = next(l for l in out.splitlines() if l.split("|")[0].strip() == "1")
  greedy = 100 * metrics[1]["accuracy_greedy"]
  assert row.split("|")[1].strip() == f"{greedy:.1f}"
  assert [m["iteration"] for m in metrics] == [0, 1]
  # The value warm start: D_V0 as it is, then the first-step mix.
  assert 0 < metrics[0]["warmstart_value_loss"] < 1
  assert 0 < metrics[0]["warmstart_first_step_value_loss"] < 1
  for method in evaluation.METHODS:
    assert 0 <= metrics[1][f"accuracy_{method}"] <= 1
  for method in ("sc", "bon"):  # the share of their samples that are correct
    assert 0 <= metrics[1][f"sample_accuracy_{method}"] <= 1
  assert metrics[1]["sample_accuracy"] == pytest.approx(
      (metrics[1]["sample_accuracy_sc"] + metrics[1]["sample_accuracy_bon"]) / 2)
  rows = [json.loads(l) for l in
          (finished / "eval.jsonl").read_text().splitlines()]
  assert {(r["iteration"], r["method"]) for r in rows} == {
      (i, m) for i in (0, 1) for m in evaluation.METHODS}
  assert all(("sample_accuracy" in r) == (r["method"] in ("sc", "bon"))
             for r in rows)
  for name in ("accuracy_per_iteration.png", "accuracy_vs_budget.png"):
    assert (finished / "plots" / name).read_bytes()[:4] == b"\x89PNG"
  page = (finished / "trees" / "iteration_1" / "search_0.html").read_text()
  assert "<html" in page and "n=" in page
  assert list((finished / "tensorboard").glob("events.out.tfevents.*"))
  assert _steps(finished)[-1] == LAST_PHASE


@pytest.mark.parametrize("after_step", [2])  # inside training
def test_sigkill_anywhere_then_rerun_gives_the_same_metrics(finished, tmp,
                                                            after_step):
  workdir = tmp / f"killed_after_{after_step}"
  process = _main(workdir, tmp)
  _wait_for_step(process, workdir, after_step)
  # At once: with compilations cached, the phases left can take under a
  # second on a fast machine.
  process.kill()
  process.wait()
  assert _steps(workdir)[-1] < LAST_PHASE  # it was stopped mid-run
  code, out = _finish(_main(workdir, tmp))
  assert code == 0, out
  assert "resumed after phase" in out
  assert _metrics(workdir) == _metrics(finished)


def _scalars(workdir) -> list[tuple[str, int, float]]:
  """`(tag, step, value)` of a workdir's TensorBoard events as TensorBoard
  shows them: files in the order written, a session start at step s
  dropping the earlier events at steps >= s."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):  # TFRecords: length, its crc, the record, its crc
      length = int.from_bytes(data[i:i + 8], "little")
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 16 + length
      if event.session_log.status == event_pb2.SessionLog.START:
        out = [s for s in out if s[1] < event.step]
      out += [(v.tag, event.step, v.simple_value)
              for v in event.summary.value]
  return out


def test_a_rerun_restores_tensorboard_events_a_kill_lost(finished, tmp):
  lost = _copy(finished, tmp, "lost_events")
  shutil.rmtree(lost / "tensorboard")  # killed after its last checkpoint
  kept = _copy(finished, tmp, "kept_events")  # or not
  for workdir in (lost, kept):
    code, out = _finish(_main(workdir, tmp))
    assert code == 0, out
    scalars = _scalars(workdir)
    assert sorted(scalars) == sorted(_scalars(finished))
    assert len({(tag, step) for tag, step, _ in scalars}) == len(scalars)
    for row in _metrics(finished):
      assert (("accuracy_greedy", row["iteration"], pytest.approx(
          row["accuracy_greedy"])) in scalars)
  # The rerun wrote every row again, but TensorBoard shows each once.
  assert len(list((kept / "tensorboard").glob("events.*"))) == 2


def test_sigterm_saves_at_the_next_phase_boundary_and_exits_0(finished, tmp):
  workdir = tmp / "preempted"
  process = _main(workdir, tmp)
  _wait_for_step(process, workdir, 0)
  process.send_signal(signal.SIGTERM)
  code, out = _finish(process)
  assert code == 0, out
  assert "rerun the same command" in out
  stopped_at = _steps(workdir)[-1]
  assert stopped_at < LAST_PHASE  # the boundary at or after the signal
  code, out = _finish(_main(workdir, tmp))
  assert code == 0, out
  assert _metrics(workdir) == _metrics(finished)


def _evaluate(tmp, *flags):
  out = subprocess.run(
      [sys.executable, "-m", "restmcts_jax.evaluate", *flags], cwd=ROOT,
      env=_env(tmp), capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_evaluate_cli_prints_a_table_and_one_result_per_method(finished,
                                                               tmp):
  out = _evaluate(tmp, f"--checkpoint={finished}", "--methods=greedy,sc",
                  "--budget=2")
  assert "method | samples | accuracy" in out
  # The loop's own evaluation at the same budget saw the same numbers.
  last = _metrics(finished)[-1]
  assert f"RESULT accuracy_greedy {last['accuracy_greedy']:.4f}" in out
  assert f"RESULT accuracy_sc {last['accuracy_sc']:.4f}" in out
  greedy_row = next(l for l in out.splitlines() if l.startswith("greedy"))
  cells = [cell.strip() for cell in greedy_row.split("|")]
  assert cells[2:5] == [f"{last['accuracy_greedy']:.3f}", "-",
                        f"{last['tokens_greedy']:.1f}"]
  # The same puzzles from a file given as --data: the same results.
  config, *_ = experiment.restore(finished)
  puzzles = [p.reference for p in
             experiment.load_data(config, warm_start=False).test]
  csv = tmp / "held_out.csv"
  csv.write_text(game24.tot_csv_text(puzzles))
  on_file = _evaluate(tmp, f"--checkpoint={finished}", f"--data={csv}",
                      "--methods=greedy,sc", "--budget=2")
  results = lambda text: [l for l in text.splitlines()
                          if l.startswith("RESULT")]
  assert results(on_file) == results(out)


def test_a_workdir_older_than_a_config_key_evaluates_and_names_it(finished,
                                                                    tmp):
  workdir = _copy(finished, tmp, "older")
  path = workdir / "config.json"
  saved = json.loads(path.read_text())
  for section, key in [("model", "compute_dtype"), ("eval", "batch_size"),
                       ("warmstart", "examples"),
                       ("warmstart", "complete_value_solutions"),
                       ("warmstart", "value_first_steps"),
                       ("warmstart", "value_first_step_share"),
                       ("eval", "search"), ("train", "length_buckets"),
                       ("search", "skip_exhausted"),
                       ("search", "max_expansions"),
                       ("search", "widen_visits"),
                       ("search", "widen_after_final"),
                       ("search", "token_budget"),
                       ("search", "stochastic_budget"),
                       ("train", "trace_history"), ("train", "value_loss")]:
    del saved[section][key]
  # Such runs answered with their training search's settings: set unlike
  # any config's eval.search, so the backfill must read the run's own.
  unusual = json.loads(json.dumps(saved))
  unusual["search"].update(branch=3, exploration=0.123)
  path.write_text(json.dumps(unusual))
  loaded = experiment.load_config(workdir)
  assert experiment.length_buckets(loaded) == batching.DEFAULT_BUCKETS
  assert (loaded.search.skip_exhausted, loaded.search.max_expansions,
          loaded.search.widen_visits, loaded.search.widen_after_final,
          loaded.search.token_budget, loaded.search.stochastic_budget
          ) == (False, 1, 0, False, 0, False)
  assert loaded.train.trace_history == "iteration"
  assert loaded.train.value_loss == "mse"
  assert loaded.warmstart.value_first_steps == 0
  eval_search = loaded.eval.search.to_dict()
  later = {"skip_exhausted": False, "max_expansions": 1, "widen_visits": 0,
           "widen_after_final": False, "stop_at_end_gate": True,
           "rollout_answers": False, "stochastic_budget": False}
  assert eval_search == {**{k: unusual["search"][k]
                            for k in experiment.EVAL_SEARCH_KEYS
                            if k not in later}, **later}
  path.write_text(json.dumps(saved))
  # Filled in with what runs did before the keys existed.
  results = evaluate.evaluate_checkpoint(
      workdir, task_name=None, data=None, methods=("greedy",), budget=1)
  assert results[0].accuracy == _metrics(finished)[-1]["accuracy_greedy"]
  with pytest.raises(ValueError, match=(
      "config key search.max_expansions is 3 but .* "
      "predates the key \\(its run used 1\\)")):
    selftrain.run(_config(), workdir)


def test_evaluate_cli_names_a_missing_checkpoint_folder(tmp):
  missing = tmp / "no_such_run"
  out = subprocess.run(
      [sys.executable, "-m", "restmcts_jax.evaluate",
       f"--checkpoint={missing}"], cwd=ROOT, capture_output=True, text=True,
      check=False)
  assert out.returncode != 0
  assert f"no checkpoint folder at {missing}" in out.stderr


def _config(**overrides):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.iterations = 1
  config.update_from_flattened_dict(overrides)
  return config


def _copy(finished, tmp, name):
  workdir = tmp / name
  shutil.copytree(finished, workdir)
  return workdir


def test_a_changed_config_key_is_named(finished, tmp):
  workdir = _copy(finished, tmp, "changed")
  with pytest.raises(ValueError, match="config key model.embed_dim is 48"):
    selftrain.run(_config(**{"model.embed_dim": 48}), workdir)
  # More iterations, questions or another evaluation continue a run.
  experiment.check_config(_config(**{"iterations": 5, "search_questions": 9,
                                     "eval.budget": 2}), workdir)


def test_a_resumed_run_records_the_settings_it_changed(finished, tmp):
  workdir = _copy(finished, tmp, "resumed_with_other_settings")
  before = json.loads((workdir / "config.json").read_text())
  history = workdir / "config_history.jsonl"
  selftrain.run(_config(), workdir)  # the same settings: nothing to record
  assert json.loads((workdir / "config.json").read_text()) == before
  assert not history.exists()
  budget = before["eval"]["budget"] + 1
  for _ in range(2):  # a second run with the same change adds nothing
    assert selftrain.run(_config(**{"eval.budget": budget}),
                         workdir) == _metrics(finished)
  assert experiment.load_config(workdir).eval.budget == budget
  (line,) = history.read_text().splitlines()
  assert json.loads(line) == dict(replaced_at="end of iteration 1",
                                  config=before)
  # Killed after the history's write, before config.json's: no second line.
  (workdir / "config.json").write_text(json.dumps(before))
  experiment.update_config(_config(**{"eval.budget": budget}), workdir,
                           "end of iteration 1")
  assert history.read_text().splitlines() == [line]
  assert experiment.load_config(workdir).eval.budget == budget


def test_a_tokenizer_that_does_not_match_the_checkpoints_is_named(finished,
                                                                   tmp):
  workdir = _copy(finished, tmp, "other_tokenizer")
  texts = [f"{a} + {b} = {a + b}\n" for a in range(30) for b in range(30)]
  words = [f"{a} times {b} makes {a * b} apples\n"
           for a in range(40) for b in range(40)]
  same_size = SentencePieceTokenizer.load(
      finished / "tokenizer.model").vocab_size
  for corpus, size, why in [(texts, 300, "were trained with 400"),
                            (words, same_size, "but other pieces")]:
    SentencePieceTokenizer.train(corpus, workdir / "tokenizer",
                                 vocab_size=size)
    with pytest.raises(ValueError, match=why):
      selftrain.run(_config(), workdir)
    with pytest.raises(ValueError, match="tokenizer does not match the model"):
      evaluate.evaluate_checkpoint(workdir, task_name=None, data=None,
                                   methods=("greedy",), budget=1)


def test_a_malformed_data_line_is_named(tmp):
  data = tmp / "gsm8k_bad.jsonl"
  good = json.dumps(dict(question="1 + 1?", answer="1 + 1 = 2\n#### 2"))
  data.write_text(good + "\n{not json\n")
  config = _config(task="gsm8k", **{"data.train": str(data),
                                    "data.test": str(data)})
  with pytest.raises(ValueError, match=f"{data}:2"):
    selftrain.run(config, tmp / "gsm8k_run")


def test_an_unknown_config_key_is_named(tmp):
  out = subprocess.run(
      [sys.executable, "-m", "restmcts_jax.main", "--config",
       "configs/tiny.py", "--config.serach.branch=3", "--workdir",
       str(tmp / "typo")], cwd=ROOT, capture_output=True, text=True,
      check=False)
  assert out.returncode != 0
  # One line, not a traceback: the flag, the key and the likely intent.
  assert out.stderr.strip().splitlines() == [
      "error: --config.serach.branch: no such config key 'serach' "
      'Did you mean "search" instead of "serach"?']
  # Among several overrides, the one at fault; a deeper key likewise.
  out = subprocess.run(
      [sys.executable, "-m", "restmcts_jax.main", "--config",
       "configs/tiny.py", "--config.iterations=2", "--config.eval.bugdet=3",
       "--workdir", str(tmp / "typo")], cwd=ROOT, capture_output=True,
      text=True, check=False)
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
      "error: --config.eval.bugdet: no such config key 'bugdet' "
      'Did you mean "budget" instead of "bugdet"?']


def test_a_url_workdir_runs_resumes_and_evaluates_like_a_local_one(
    finished, tmp, caplog):
  """--workdir=gs://BUCKET/PATH: every file through etils.epath, checkpoints
  through orbax (gs:// mapped onto local disk by `fake_gcs`)."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.iterations = 1
  bucket = tmp / "bucket_root"
  url = "gs://bucket/runs/tiny"
  with fake_gcs.bucket_root(bucket):
    selftrain.run(config, url)
    on_disk = bucket / "bucket" / "runs" / "tiny"
    assert _metrics(on_disk) == _metrics(finished)
    for name in ("config.json", "tokenizer.model", "eval.jsonl",
                 "plots/accuracy_vs_budget.png",
                 "trees/iteration_1/search_0.html"):
      assert (on_disk / name).is_file(), name
    assert list((on_disk / "tensorboard").glob("events.out.tfevents.*"))
    assert _steps(on_disk)[-1] == LAST_PHASE
    # A rerun resumes from the bucket's last checkpoint: no phase runs again.
    steps = _steps(on_disk)
    with caplog.at_level("INFO"):
      assert selftrain.run(config, url) == _metrics(finished)
    assert f"resumed after phase eval of iteration 1 from {url}" in caplog.text
    assert _steps(on_disk) == steps
    _, tokenizer, _, meta = experiment.restore(url)
    assert meta["metrics"] == _metrics(finished)
    assert tokenizer.vocab_size == config.tokenizer.vocab_size


@pytest.mark.parametrize("url", ["nosuch://b/x", "memory://b/x"])
def test_a_workdir_url_without_a_file_system_is_named(url):
  with pytest.raises(ValueError, match=f"--workdir={url}"):
    experiment.workdir_path(url)


_COMPILE_TWICE = """
import sys, time
import jax, jax.numpy as jnp
from restmcts_jax import experiment
experiment.enable_compilation_cache(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name.endswith("cache_hits")))
# A fresh jitted function each time, as each training call makes.
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
print("HITS", sum(hits), jax.config.jax_compilation_cache_dir)
"""


def _compile_twice(directory, env):
  out = subprocess.run([sys.executable, "-c", _COMPILE_TWICE, str(directory)],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       check=True).stdout
  hits, where = out.split("HITS ")[1].split()
  return int(hits), where


def test_the_compilation_cache_serves_a_fresh_jit_and_yields_to_the_env(tmp):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("JAX_COMPILATION_CACHE")}
  hits, where = _compile_twice(tmp / "xla", env)
  assert where == str(tmp / "xla") and hits >= 1
  assert any((tmp / "xla").iterdir())
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "from_env")
  _, where = _compile_twice(tmp / "xla", env)
  assert where == str(tmp / "from_env")
  del env["JAX_COMPILATION_CACHE_DIR"]
  assert _compile_twice("", env) == (0, "None")
  # A folder that cannot be made: no cache, no error.
  (tmp / "a_file").write_text("")
  assert _compile_twice(tmp / "a_file" / "xla", env) == (0, "None")


_MAIN_WITHOUT_A_RUN = """
import sys
import jax
from absl import app
from restmcts_jax import main
main.selftrain.run = lambda config, workdir: print(
    "CACHE", jax.config.jax_compilation_cache_dir) or []
app.run(main.main, argv=["main", "--config", "configs/tiny.py",
                         "--workdir", sys.argv[1], *sys.argv[2:]])
"""


def test_main_keeps_the_compilation_cache_its_flag_names(tmp):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("JAX_COMPILATION_CACHE")}
  def cache(*flags):
    out = subprocess.run(
        [sys.executable, "-c", _MAIN_WITHOUT_A_RUN, str(tmp / "unused"),
         *flags], cwd=ROOT, env=env, capture_output=True, text=True,
        check=True).stdout
    return out.split("CACHE ")[1].split()[0]
  assert cache(f"--compilation_cache={tmp / 'flag'}") == str(tmp / "flag")
  assert cache("--compilation_cache=") == "None"


_EVALUATE_WITHOUT_A_RUN = """
import sys
import jax
from absl import app
from restmcts_jax import evaluate
evaluate._main_checkpoint = lambda: print(
    "CACHE", jax.config.jax_compilation_cache_dir)
app.run(evaluate.main, argv=["evaluate", "--checkpoint", sys.argv[1],
                             *sys.argv[2:]])
"""


def test_evaluate_keeps_the_compilation_cache_its_flag_names(tmp):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("JAX_COMPILATION_CACHE")}
  out = subprocess.run(
      [sys.executable, "-c", _EVALUATE_WITHOUT_A_RUN, str(tmp / "unused"),
       f"--compilation_cache={tmp / 'eval_flag'}"], cwd=ROOT, env=env,
      capture_output=True, text=True, check=True).stdout
  assert out.split("CACHE ")[1].split()[0] == str(tmp / "eval_flag")
  # The flag is defined once, for both command lines.
  subprocess.run([sys.executable, "-c", "import restmcts_jax.evaluate, "
                  "restmcts_jax.main"], cwd=ROOT, env=env, check=True)
