"""workflow.api in a real Jupyter kernel (nbclient, ipykernel): a notebook debugs a model on
arrays, and the cell's rich output is the Result's report."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent

CELLS = [
    """import sys
sys.path.insert(0, {root!r})
import matplotlib
backend = matplotlib.get_backend()
from flax import nnx
from sklearn.datasets import load_wine
from workflow import api

class Net(nnx.Module):  # defined in the notebook: importable nowhere else
    def __init__(self, din, dout, *, rngs):
        self.linear = nnx.Linear(din, 32, rngs=rngs)
        self.out = nnx.Linear(32, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.linear(x)))

x, y = load_wine(return_X_y=True)""",
    """result = api.debug(Net(13, 3, rngs=nnx.Rngs(0)), {{"x": x, "y": y}}, workdir={workdir!r},
                   **{{"debug.overfit_steps": 150, "debug.train_steps": 60, "progress": False}})
result""",
    "print(result.status, matplotlib.get_backend() == backend, result.summary['config']['model'])",
]


def test_a_notebook_renders_the_result(tmp_path):
    notebook = nbformat.v4.new_notebook()
    workdir = str(tmp_path / "run")
    notebook.cells = [
        nbformat.v4.new_code_cell(c.format(root=str(ROOT), workdir=workdir)) for c in CELLS
    ]
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    except Exception as e:  # noqa: BLE001 - name the cell that failed
        pytest.fail(f"the notebook failed: {e}")
    rich = [o for o in notebook.cells[1].outputs if o.get("output_type") == "execute_result"]
    html = rich[0]["data"]["text/html"]
    assert "debug: " in html and "<img src='data:image/png;base64," in html
    assert (tmp_path / "run" / "summary.json").is_file()
    printed = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
    assert printed.strip().endswith("True {'name': 'Net@python'}")
    assert printed.split()[0] in ("ok", "failed")
