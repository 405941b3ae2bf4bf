"""gs:// on local disk, for testing URL workdirs offline: fsspec's `gs` and
`gcs` protocols (what `etils.epath` reads and writes gs:// through) and
orbax's TensorStore key-value stores (the `gcs` driver for gs://) both map
gs://BUCKET/PATH to ROOT/BUCKET/PATH; orbax's one question to the bucket
itself (hierarchical namespace?) is answered no."""

import contextlib
import importlib
import os

import fsspec
from etils.epath import gpath
from fsspec.implementations import local
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

_PROTOCOLS = ("gs", "gcs")
# The module: `fsspec.registry` is its read-only view of the classes.
_REGISTRY = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access


def _local_path(root: str, url: str) -> str:
  for prefix in ("gs://", "gcs://"):
    if url.startswith(prefix):
      return os.path.join(root, url[len(prefix):])
  return url


@contextlib.contextmanager
def bucket_root(root):
  """Within the context, gs://BUCKET/PATH is `root`/BUCKET/PATH."""
  root = str(root)

  class Bucket(local.LocalFileSystem):
    protocol = _PROTOCOLS

    @classmethod
    def _strip_protocol(cls, path):
      return super()._strip_protocol(_local_path(
          root, fsspec.utils.stringify_path(path)))

    def glob(self, path, **kwargs):
      # As gcsfs answers: BUCKET/PATH, which epath prefixes with gs://.
      return [os.path.relpath(p, root) for p in super().glob(path, **kwargs)]

  build_kvstore_tspec = ts_utils.build_kvstore_tspec

  def local_kvstore_tspec(directory, *args, **kwargs):
    return build_kvstore_tspec(_local_path(root, str(directory)), *args,
                               **kwargs)

  # orbax asks the bucket (google-cloud-storage) about its namespace; epath
  # would take gs:// through TensorFlow where it is installed.
  patches = {
      ts_utils: dict(build_kvstore_tspec=local_kvstore_tspec),
      gcs_utils: dict(is_hierarchical_namespace_enabled=lambda path: False),
      gpath: dict(_is_tf_installed=lambda: False)}
  saved_fns = {(m, n): getattr(m, n) for m, fns in patches.items()
               for n in fns}
  saved = {p: _REGISTRY.get(p) for p in _PROTOCOLS}
  for p in _PROTOCOLS:
    fsspec.register_implementation(p, Bucket, clobber=True)
  for module, fns in patches.items():
    for name, fn in fns.items():
      setattr(module, name, fn)
  try:
    yield
  finally:
    for (module, name), fn in saved_fns.items():
      setattr(module, name, fn)
    for p, cls in saved.items():
      if cls is None:
        _REGISTRY.pop(p, None)
      else:
        fsspec.register_implementation(p, cls, clobber=True)
    Bucket.clear_instance_cache()
