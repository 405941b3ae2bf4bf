"""A GSM8K- (or MATH-) format addition task the tiny model learns in its
warm start, so a short search finds correct solutions with the real verifier
and both models train on what it found."""

import json

SUMS = ((2, 3), (4, 5), (7, 1), (6, 2), (3, 3), (8, 1))

# `configs/tiny.py` overrides, as `--config.<key>=<value>` flags take them.
OVERRIDES = {
    "iterations": 1, "task": "gsm8k", "warmstart.steps": 200,
    "warmstart.learning_rate": 3e-3, "max_depth": 3, "search_questions": 6,
    "tokenizer.vocab_size": 300, "sampler.temperature": 0.3,
}


def write_data(path, task="gsm8k"):
  """Writes the problems as GSM8K (or MATH) JSONL to `path`, returns it."""
  def row(a, b):
    if task == "math":
      return dict(problem=f"What is {a} + {b}?", solution=(
          f"{a} + {b} = {a + b}\nSo it is $\\boxed{{{a + b}}}$."))
    return dict(question=f"What is {a} + {b}?",
                answer=f"{a} + {b} = {a + b}\n#### {a + b}")
  path.write_text("".join(json.dumps(row(a, b)) + "\n" for a, b in SUMS))
  return path


def flags(data) -> list[str]:
  """The overrides and the data files as command-line flags."""
  return [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + [
      f"--config.data.train={data}", f"--config.data.test={data}"]


def config(data, task="gsm8k"):
  """`configs/tiny.py` with the overrides and the data files."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  out = tiny.get_config()
  out.update_from_flattened_dict({**OVERRIDES, "task": task})
  out.data.train = out.data.test = str(data)
  return out
