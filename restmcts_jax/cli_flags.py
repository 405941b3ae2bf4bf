"""Command-line flags shared by `restmcts_jax.main` and
`restmcts_jax.evaluate` (defined once: both may be imported together)."""

from absl import flags

from restmcts_jax import experiment

COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", experiment.DEFAULT_COMPILATION_CACHE,
    "Folder of JAX's persistent compilation cache: resumed runs, reruns and "
    "later iterations load the programs compiled before instead of "
    "compiling them again ('' turns it off; JAX_COMPILATION_CACHE_DIR, "
    "where set, wins).")


def enable_compilation_cache() -> None:
  """`experiment.enable_compilation_cache` at `--compilation_cache`."""
  experiment.enable_compilation_cache(COMPILATION_CACHE.value)
