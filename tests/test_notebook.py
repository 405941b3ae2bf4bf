"""The Colab quick-start notebook runs end to end on the tiny config."""

import json
import pathlib

import pytest

NOTEBOOK = (pathlib.Path(__file__).resolve().parents[1] / "notebooks"
            / "quickstart.ipynb")


def _text(output) -> str:
  if output["output_type"] == "stream":
    return output["text"]
  return output.get("data", {}).get("text/plain", "")


def test_quickstart_notebook_is_saved_without_outputs():
  nb = json.loads(NOTEBOOK.read_text())
  assert nb["nbformat"] == 4
  assert nb["metadata"]["kernelspec"]["name"] == "python3"
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, (
          f"cell {cell['id']} has outputs: save the notebook cleared")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nbformat = pytest.importorskip(
      "nbformat", reason="the notebook test needs nbformat (the test extra)")
  nbclient = pytest.importorskip(
      "nbclient", reason="the notebook test needs nbclient (the test extra)")
  pytest.importorskip(
      "ipykernel", reason="the notebook test needs ipykernel (the test extra)")
  # The kernel inherits the environment (XLA_FLAGS from conftest included).
  monkeypatch.setenv("QUICKSTART_CONFIG", "tiny")
  monkeypatch.setenv("QUICKSTART_ITERATIONS", "1")
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "run"))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()  # raises CellExecutionError naming the failing cell

  outputs = {cell["id"]: cell.get("outputs", []) for cell in nb.cells}
  errors = [(cid, o["ename"]) for cid, outs in outputs.items() for o in outs
            if o["output_type"] == "error"]
  assert not errors
  assert "accuracy_greedy" in "".join(map(_text, outputs["metrics-table"]))
  images = [o for outs in outputs.values() for o in outs
            if "image/png" in o.get("data", {})]
  assert len(images) >= 3  # two saved plots and the matplotlib figure
  pages = [o["data"]["text/html"] for o in outputs["tree"]
           if "text/html" in o.get("data", {})]
  assert pages and "search tree 0, iteration 1" in pages[0]
  evaluation = "".join(map(_text, outputs["evaluate"]))
  assert "greedy: accuracy" in evaluation and "sc: accuracy" in evaluation
  assert (tmp_path / "run" / "metrics.jsonl").is_file()
