"""Plain-text tables for command-line reports."""

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """Right-aligned columns separated by ` | `, a rule under the header."""
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda r: " | ".join(f"{str(x):>{w}}" for x, w in zip(r, widths))
  return "\n".join([line(header), "-" * len(line(header))]
                   + [line(r) for r in rows])
