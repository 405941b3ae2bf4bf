"""Paths that are local folders or bucket URLs (gs://...) alike."""

from etils import epath


def is_url(path) -> bool:
  """Whether `path` names a URL (a bucket), not a local file."""
  return "://" in str(path)


def write_atomic(path: epath.Path, data: str | bytes) -> None:
  """Writes `data` to `path` so that a reader sees the old contents or the
  new, never half: through a temporary file on disk; directly to a bucket,
  whose objects are written whole."""
  write = "write_bytes" if isinstance(data, bytes) else "write_text"
  if is_url(path):
    getattr(path, write)(data)
    return
  tmp = path.with_name(path.name + ".tmp")
  getattr(tmp, write)(data)
  tmp.replace(path)
