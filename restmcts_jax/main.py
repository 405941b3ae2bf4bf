r"""Self-training by process-reward-guided tree search (ReST-MCTS*).

    python -m restmcts_jax.main --config configs/game24.py --workdir runs/game24
    python -m restmcts_jax.main --config configs/tiny.py --workdir /tmp/tiny \
        --config.iterations=1

Rerunning the same command resumes from the last checkpoint in the workdir.
"""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from restmcts_jax import selftrain

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, the "
                               "tokenizer and metrics go.", required=True)


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
  for metrics in selftrain.run(_CONFIG.value, _WORKDIR.value):
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in metrics.items()))


if __name__ == "__main__":
  app.run(main)
