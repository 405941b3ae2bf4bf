"""Host-side views of a finished search tree: JSON and a self-contained HTML
page (step text, visits, values; the answer's root path highlighted, and the
rollout steps after it where the answer is a rollout)."""

import html
import json
from collections.abc import Callable, Sequence

import numpy as np

from restmcts_jax.search import tree as tree_lib

Decode = Callable[[Sequence[int]], str]


def tree_to_dict(
    tree: tree_lib.Tree,
    index: int,
    *,
    answer_node: int | None = None,
    rollout_steps: Sequence[str] = (),
    decode: Decode = lambda ids: " ".join(map(str, ids)),
) -> dict:
  """Tree `index` of a batch as plain Python data.

  Args:
    tree: a batch of trees (device or numpy arrays).
    index: which tree.
    answer_node: node to mark (and its root path) as chosen.
    rollout_steps: where the answer is a rollout from `answer_node`, its
      steps' text (`answer_rollout_steps`); they are not nodes.
    decode: token ids -> text, e.g. `tokenizer.decode`.

  Returns:
    `{"question": str, "answer_node": int | None, "rollout_steps": [str],
    "nodes": [...]}` with one entry per node: id, parent, depth, step,
    visits, value, prior_value, final, children, on_answer_path.
  """
  t = {name: np.asarray(getattr(tree, name)[index])
       for name in ("parent", "depth", "children", "step_tokens", "step_len",
                    "visits", "value", "prior_value", "final", "num_nodes",
                    "question_tokens", "question_len")}
  n = int(t["num_nodes"])
  on_path = set()
  node = answer_node
  while node is not None and node >= 0:
    on_path.add(int(node))
    node = int(t["parent"][node]) if node != tree_lib.ROOT_INDEX else None
  nodes = [
      dict(id=i, parent=int(t["parent"][i]), depth=int(t["depth"][i]),
           step=decode(t["step_tokens"][i, :t["step_len"][i]].tolist()),
           visits=int(t["visits"][i]), value=float(t["value"][i]),
           prior_value=float(t["prior_value"][i]), final=bool(t["final"][i]),
           children=[int(c) for c in t["children"][i] if c >= 0],
           on_answer_path=i in on_path)
      for i in range(n)
  ]
  question = decode(t["question_tokens"][:t["question_len"]].tolist())
  return dict(question=question, answer_node=answer_node,
              rollout_steps=list(rollout_steps), nodes=nodes)


def answer_rollout_steps(result, index: int, decode: Decode) -> list[str]:
  """The steps of search `index`'s answer after its answer node: those of
  its best finished rollout where that is the answer (an
  `mcts_star.SearchResult`), else none."""
  if not bool(result.answer_is_rollout[index]):
    return []
  steps = np.asarray(result.best_rollout.steps[index])
  lengths = np.asarray(result.best_rollout.step_lengths[index])
  return [decode(step[:n].tolist()) for step, n in zip(steps, lengths) if n]


def tree_to_json(tree: tree_lib.Tree, index: int, **kwargs) -> str:
  """`tree_to_dict` as a JSON string."""
  return json.dumps(tree_to_dict(tree, index, **kwargs), indent=1)


_STYLE = """
body { font-family: sans-serif; font-size: 14px; margin: 1.5em; }
ul { list-style: none; padding-left: 1.4em; border-left: 1px dotted #bbb; }
li { margin: 0.2em 0; }
.step { font-family: monospace; white-space: pre-wrap; }
.meta { color: #666; font-size: 12px; margin-left: 0.6em; }
.final .step { font-weight: bold; }
.chosen > .node { background: #e4f5d9; border-radius: 3px; }
.rollout .node { border: 1px dashed #8a8; }
"""


def tree_to_html(tree: tree_lib.Tree, index: int, *, title: str = "Search tree",
                 **kwargs) -> str:
  """A self-contained HTML page of tree `index` (no scripts, no assets)."""
  data = tree_to_dict(tree, index, **kwargs)
  nodes = data["nodes"]

  def rollout(steps) -> str:
    """The answer's rollout steps, one chain below its answer node."""
    if not steps:
      return ""
    return (f'<ul><li class="rollout chosen"><span class="node">'
            f'<span class="step">{html.escape(steps[0])}</span>'
            f'<span class="meta">rollout step, not a node</span></span>'
            f'{rollout(steps[1:])}</li></ul>')

  def render(i: int) -> str:
    node = nodes[i]
    classes = " ".join(c for c, on in (("final", node["final"]),
                                       ("chosen", node["on_answer_path"]))
                       if on)
    text = "(question)" if i == tree_lib.ROOT_INDEX else node["step"]
    meta = (f"#{i} n={node['visits']} v={node['value']:.3f} "
            f"prior={node['prior_value']:.3f}")
    kids = "".join(render(c) for c in node["children"])
    kids = f"<ul>{kids}</ul>" if kids else ""
    if i == data["answer_node"]:
      kids += rollout(data["rollout_steps"])
    return (f'<li class="{classes}"><span class="node">'
            f'<span class="step">{html.escape(text)}</span>'
            f'<span class="meta">{meta}</span></span>{kids}</li>')

  return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
          f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
          f"<body><h1>{html.escape(title)}</h1>"
          f"<p class='step'>{html.escape(data['question'])}</p>"
          f"<ul>{render(tree_lib.ROOT_INDEX)}</ul></body></html>")
