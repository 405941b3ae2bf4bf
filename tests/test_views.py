"""Tree views: JSON round trip and the HTML page with the answer path."""

import json

import jax
import numpy as np

from restmcts_jax.search import mcts_star
from restmcts_jax.search import views
from tests import toy_models


def _result():
  config = mcts_star.MCTSConfig(num_iterations=4, branch=3, roll_branch=1,
                                roll_forward_steps=1, max_depth=3,
                                max_step_len=toy_models.MAX_STEP_LEN,
                                stop_at_end_gate=False)
  q = np.array([[1, 2], [3, 4]], np.int32)
  return jax.jit(lambda: mcts_star.search(
      toy_models.MODELS, q, np.array([2, 2]),
      jax.random.split(jax.random.key(0), 2), config))()


def test_json_lists_every_node_and_marks_the_answer_path():
  result = _result()
  answer = int(result.answer_node[1])
  data = json.loads(views.tree_to_json(result.tree, 1, answer_node=answer))
  nodes = data["nodes"]
  assert len(nodes) == int(result.tree.num_nodes[1])
  assert data["question"] == "3 4"
  for node in nodes[1:]:
    assert node["id"] in nodes[node["parent"]]["children"]
    assert node["depth"] == nodes[node["parent"]]["depth"] + 1
  path = [n["id"] for n in nodes if n["on_answer_path"]]
  node, want = answer, []
  while node >= 0:
    want.append(node)
    node = nodes[node]["parent"]
  assert sorted(path) == sorted(want) and 0 in path
  np.testing.assert_allclose([n["visits"] for n in nodes],
                             np.asarray(result.tree.visits[1, :len(nodes)]))


def test_html_page_is_self_contained_and_escapes_text():
  result = _result()
  page = views.tree_to_html(result.tree, 0, answer_node=int(result.answer_node[0]),
                            decode=lambda ids: "<" + "&".join(map(str, ids)),
                            title="Tree <0>")
  assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
  assert "<script" not in page and "http" not in page
  assert "Tree &lt;0&gt;" in page and "&lt;1&amp;2" in page
  assert page.count('class="chosen') + page.count('class="final chosen') >= 2
  assert page.count("<li") == int(result.tree.num_nodes[0])


def test_a_rollout_answer_shows_its_steps_below_its_start_node():
  config = mcts_star.MCTSConfig(num_iterations=3, branch=2, roll_branch=2,
                                roll_forward_steps=3, max_depth=3,
                                max_step_len=toy_models.MAX_STEP_LEN,
                                stop_at_end_gate=False, rollout_answers=True)
  q = np.array([[i, i + 3, 2 * i] for i in range(1, 17)], np.int32)
  result = jax.jit(lambda: mcts_star.search(
      toy_models.MODELS, q, np.full(16, 3),
      jax.random.split(jax.random.key(0), 16), config))()
  decode = lambda ids: "s" + "_".join(map(str, ids))
  rollouts = [views.answer_rollout_steps(result, i, decode) for i in range(16)]
  index = next(i for i, steps in enumerate(rollouts) if steps)
  assert not all(rollouts)  # node answers have none
  lengths = np.asarray(result.best_rollout.step_lengths[index])
  assert len(rollouts[index]) == np.count_nonzero(lengths)
  page = views.tree_to_html(result.tree, index,
                            answer_node=int(result.answer_node[index]),
                            rollout_steps=rollouts[index], decode=decode)
  assert page.count("rollout step, not a node") == len(rollouts[index])
  assert page.count("<li") == (int(result.tree.num_nodes[index]) +
                               len(rollouts[index]))
  # The chain hangs below the answer node, after the node's descendants.
  answer = int(result.answer_node[index])
  parent = np.asarray(result.tree.parent[index])
  below, frontier = 0, [answer]
  while frontier:
    kids = [int(k) for k in np.nonzero(np.isin(parent, frontier))[0]]
    below, frontier = below + len(kids), kids
  start = page.index(f"#{answer} n=")
  chain = page.index("rollout step, not a node")
  assert page[start:chain].count("<li") == below + 1
