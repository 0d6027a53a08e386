"""The README's "Your own model and data" guide, executed as written: its model file and each
of its commands, on scikit-learn's breast-cancer and wine tables written as CSV and its digits
written as a folder of PNGs (offline)."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests.user_setups import breast_cancer_csv, digits_folder, wine_csv

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = re.search(
    r"^## Your own model and data\n(.*?)^## ", (ROOT / "README.md").read_text(), re.S | re.M
).group(1)
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)
COMMANDS = [
    line
    for block in re.findall(r"```bash\n(.*?)```", SECTION, re.S)
    for line in block.replace("\\\n", " ").splitlines()
    if line.strip()
]


def test_the_guide_shows_a_model_file_and_its_commands():
    assert len(PYTHON_BLOCKS) == 2 and len(COMMANDS) == 3
    assert "class Model(nnx.Module)" in PYTHON_BLOCKS[0] and "api.debug(" in PYTHON_BLOCKS[1]
    assert all(c.startswith("python -m workflow.debug ") for c in COMMANDS)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> pathlib.Path:
    """A folder as a reader of the README has it: the data files the commands name and the
    model file the README shows (my_model.py); `configs/custom.py` is the workflow's own,
    found from this directory (config_lib.resolve_config_path)."""
    folder = tmp_path_factory.mktemp("reader")
    breast_cancer_csv(folder)
    wine_csv(folder)
    digits_folder(folder)
    (folder / "my_model.py").write_text(PYTHON_BLOCKS[0])
    return folder


def run_in(folder: pathlib.Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `python argv...` in `folder` as the reader would, the project on the path."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(folder)]),
    )
    return subprocess.run(
        [sys.executable, *argv], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


# The first command runs by default (the Python example runs the docs model); the image folder
# and the docs model on the command line run with the slow tests.
@pytest.mark.parametrize(
    "index", [pytest.param(i, marks=[pytest.mark.slow] if i else []) for i in range(len(COMMANDS))]
)
def test_each_command_of_the_guide_runs_to_a_verdict(index, user_folder):
    argv = shlex.split(COMMANDS[index])
    assert argv[0] == "python"
    result = run_in(user_folder, argv[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
    summary = json.loads((user_folder / workdir / "summary.json").read_text())
    assert summary["status"] == "ok"


def test_the_guide_s_python_example_runs(user_folder):
    result = run_in(user_folder, ["-c", PYTHON_BLOCKS[1]])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("ok [")
    summary = json.loads((user_folder / "runs" / "wine_py" / "summary.json").read_text())
    assert summary["stage"] == "debug" and summary["config"]["model"]["name"] == "Model@python"
