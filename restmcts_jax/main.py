r"""Self-training by process-reward-guided tree search (ReST-MCTS*).

    python -m restmcts_jax.main --config configs/game24.py --workdir runs/game24
    python -m restmcts_jax.main --config configs/tiny.py --workdir /tmp/tiny \
        --config.iterations=1

Rerunning the same command resumes from the last checkpoint in the workdir.
Several processes (one per host) run one job with `--distributed` where JAX
detects the cluster (Cloud TPU), or with explicit flags elsewhere:

    python -m restmcts_jax.main ... --coordinator_address=10.0.0.1:1234 \
        --num_processes=2 --process_id=0     # and --process_id=1 on the other
"""

import ast
import contextlib
import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags

from restmcts_jax import cli_flags
from restmcts_jax import distributed
from restmcts_jax import selftrain
from restmcts_jax import tables
from restmcts_jax.tasks import jsonl

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, the "
                               "tokenizer and metrics go.", required=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start JAX's multi-process runtime, detecting the "
    "cluster (Cloud TPU slices, SLURM, ...).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a "
    "multi-process run JAX cannot detect (implies --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (with --coordinator_address).")


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's per-save INFO lines; keeps its warnings and errors."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or "orbax" not in record.pathname)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/game24.py")
  cli_flags.enable_compilation_cache()
  if _DISTRIBUTED.value or _COORDINATOR.value:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  try:
    metrics = selftrain.run(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError, FloatingPointError) as e:
    sys.exit(f"error: {e}")
  if distributed.is_main():
    workdir = epath.Path(_WORKDIR.value)
    evaluations = workdir / "eval.jsonl"
    print(tables.run_report(metrics, jsonl.read_jsonl(evaluations, dict)
                            if evaluations.exists() else []))
    print(f"\nIn {workdir}: metrics.jsonl, eval.jsonl, plots/*.png, "
          "trees/, tensorboard/")


def parse_flags(argv):
  """absl's flag parsing, where a `--config.<key>` override naming no key
  of the config stops with one line naming that override (ml_collections
  raises a KeyError or AttributeError through absl: a traceback ending in
  the key). Other errors, e.g. from the config file itself, go on as
  they are."""
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    message = str(e.args[0] if e.args else e)
    if message[:1] in "'\"":  # a KeyError's text, quoted once more
      with contextlib.suppress(ValueError, SyntaxError):
        message = ast.literal_eval(message)
    message = " ".join(str(message).split())
    key = message.split("'")[1] if message.count("'") >= 2 else None
    culprits = [a.split("=")[0] for a in argv if key and a.startswith(
        "--config.") and key in a.split("=")[0].split(".")[1:]]
    if not culprits:
      raise
    sys.exit(f"error: {culprits[0]}: no such config key {message}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
