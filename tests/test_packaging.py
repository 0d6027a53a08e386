"""Configs from any directory and the console command (`dnn-troubleshoot <stage>`)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

from workflow import cli, config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def console(cwd, *args: str) -> subprocess.CompletedProcess:
    """`dnn-troubleshoot args...` as the installed script runs it, from `cwd`."""
    code = "import sys; from workflow import cli; sys.argv = sys.argv[1:]; cli.console_main()"
    return subprocess.run(
        [sys.executable, "-c", code, "dnn-troubleshoot", *args],
        cwd=cwd,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_console_command_runs_a_stage_from_any_directory(tmp_path):
    result = console(
        tmp_path,
        "debug",
        "--config=configs/digits.py:mlp",
        "--config.debug.overfit_steps=100",
        "--config.debug.train_steps=50",
        "--workdir=run",
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"]["name"] == "digits" and saved["model"]["name"] == "mlp"


def test_an_unknown_stage_is_one_line_and_exit_2(tmp_path):
    result = console(tmp_path, "fly")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: unknown stage 'fly'; usage: dnn-troubleshoot <stage> --config=<file> "
        "--workdir=<dir>, the stage one of start_simple, debug, evaluate, tune, improve, run"
    )


def test_a_config_path_is_the_workflow_s_own_unless_the_directory_has_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = config_lib.resolve_config_path("configs/digits.py")
    assert pathlib.Path(own) == ROOT / "configs" / "digits.py"
    assert cli.resolve_config_arg(["--config=configs/digits.py:mlp", "--x"]) == [
        f"--config={own}:mlp",
        "--x",
    ]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "digits.py").write_text("")
    assert config_lib.resolve_config_path("configs/digits.py") == "configs/digits.py"
    assert config_lib.resolve_config_path("configs/none.py") == "configs/none.py"


def test_the_console_script_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"dnn-troubleshoot": "workflow.cli:console_main"}
    assert callable(cli.console_main)


def test_a_models_package_shadowing_the_zoo_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("MY_MODELS = ()\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "workflow.debug", "--workdir=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: the package 'models' resolves to {tmp_path / 'models'}, not the workflow's model "
        f"zoo ({ROOT / 'models'}): a package of that name in the current directory or on "
        "PYTHONPATH shadows it; run from another directory or rename yours"
    ]
    assert not (tmp_path / "run").exists()
    # Imported from Python (a notebook there), the same line as an ImportError.
    imported = subprocess.run(
        [sys.executable, "-c", "import workflow"],
        cwd=tmp_path,
        env=dict(env, PYTHONPATH=os.pathsep.join(["", str(ROOT)])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ImportError: the package 'models' resolves to" in imported.stderr


def test_an_installed_package_finds_its_configs_in_the_data_files(tmp_path, monkeypatch):
    """pip installs configs/*.py under <prefix>/share/dnn-troubleshooting (pyproject's
    data-files); without a checkout beside the package, that is where they are found."""
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"
    ]
    assert data_files == {"share/dnn-troubleshooting/configs": ["configs/*.py"]}
    installed = tmp_path / "share" / "dnn-troubleshooting"
    (installed / "configs").mkdir(parents=True)
    (installed / "configs" / "digits.py").write_text("")
    monkeypatch.setattr(config_lib, "PROJECT_ROOT", str(tmp_path / "site-packages"))
    monkeypatch.setattr(config_lib, "INSTALLED_DATA", str(installed))
    monkeypatch.chdir(tmp_path)
    assert config_lib.resolve_config_path("configs/digits.py") == str(
        installed / "configs" / "digits.py"
    )


def test_the_console_command_prints_its_usage():
    result = console(ROOT, "--help")
    assert result.returncode == 0 and result.stdout.startswith(cli.CONSOLE_USAGE + "\n")


def script(tmp_path) -> pathlib.Path:
    """The console script as pip writes it, in a bin/ of its own (its directory leads sys.path,
    not the current one)."""
    path = tmp_path / "bin" / "dnn-troubleshoot"
    path.parent.mkdir()
    path.write_text("import sys\nfrom workflow.cli import console_main\nsys.exit(console_main())\n")
    return path


@pytest.mark.slow
def test_a_workflow_package_in_the_current_directory_shadows_python_m_not_the_command(tmp_path):
    """`python -m workflow.debug` imports a project's own `workflow/` from the current
    directory before any of ours runs (Python's own error, nothing to intercept); the
    dnn-troubleshoot command runs the installed workflow there, and the project's modules it
    names still import."""
    project = tmp_path / "project"
    (project / "workflow").mkdir(parents=True)
    (project / "workflow" / "__init__.py").write_text('PIPELINE = "the user\'s own"\n')
    (project / "my_data.py").write_text(
        "from workflow.data.examples import diabetes\n\ndef load():\n    return diabetes()\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))

    def run_python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True
        )

    # Which `workflow` wins depends on how ours is installed (an editable install's import hook
    # may find `workflow.debug` first): Python's own error or our stage, never a mixture.
    shadowed = run_python("-m", "workflow.debug", "--help")
    python_error = "No module named workflow.debug" in shadowed.stderr
    ours = "implement & debug" in shadowed.stdout and not shadowed.stderr.strip()
    assert shadowed.returncode == 1 and (python_error or ours), shadowed.stderr[-2000:]
    flags = [
        "--config=configs/tasks.py:diabetes",
        "--config.dataset.name=my_data:load",
        "--config.num_steps=20",
        "--config.eval_every=10",
        "--config.progress=False",
        "--workdir=run",
    ]
    result = subprocess.run(
        [sys.executable, str(script(tmp_path)), "start_simple", *flags],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((project / "run" / "summary.json").read_text())
    assert saved["dataset"]["name"] == "my_data:load" and "test_rmse" in saved["metrics"]


@pytest.mark.slow
def test_a_built_wheel_installs_and_runs_a_config_it_ships(tmp_path):
    """`pip wheel` of the project, installed (no dependencies: the environment's) into a fresh
    virtual environment: its console command prints its usage and runs a stage on a config the
    wheel ships, from a directory without configs/, importing the installed package."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "workflow", "models", "configs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": IGNORED} if copy is shutil.copytree else {}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}

    def run(*command, cwd=tmp_path, timeout=600):
        done = subprocess.run(
            [str(c) for c in command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run(sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-w", tmp_path / "wheel")
    (wheel,) = (tmp_path / "wheel").glob("dnn_troubleshooting-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    work = tmp_path / "work"
    work.mkdir()
    command = venv / "bin" / "dnn-troubleshoot"
    assert run(command, "--help", cwd=work).stdout.startswith(cli.CONSOLE_USAGE)
    where = run(
        venv / "bin" / "python", "-c", "import workflow; print(workflow.__file__)", cwd=work
    )
    assert where.stdout.startswith(str(venv))
    flags = ["--config.num_steps=20", "--config.eval_every=10", "--config.progress=False"]
    run(
        command,
        "start_simple",
        "--config=configs/tasks.py:diabetes",
        *flags,
        "--workdir=run",
        cwd=work,
    )
    saved = json.loads((work / "run" / "summary.json").read_text())
    assert saved["config"]["task"] == "regression" and saved["status"] == "ok"


IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
