"""The debug stage's time to verdict on a practitioner's own setups, run as the README's guide
runs them: one fresh `python -m workflow.debug` process per setup, in a folder outside the
repository that holds the user's files (issue 14's budget: under 15 s on the 2-core CPU).

Command:
    python -m benchmarks.user_verdict --out=benchmarks/results/cpu_user_verdict.json

Setups (written offline from scikit-learn's datasets by tests/user_setups.py):
    breast_cancer_csv   configs/custom.py:breast_cancer.csv, the workflow's MLP
    digit_images        configs/custom.py:digit_images, a folder of 8x8 PNGs, LeNet
    wine_csv_flax_model configs/custom.py:wine.csv with the Flax docs' Model (din, dmid, dout)
    wine_npz            configs/custom.py:wine.npz, test carved from x/y
    diabetes            configs/tasks.py:diabetes, regression
    multilabel          configs/tasks.py:multilabel

Each row: `process_seconds` (the whole command: Python and JAX imports, data, model, every
compilation, the verdict, the run directory written) and `verdict_seconds` (the stage's own
`seconds_to_verdict` from summary.json), cold (JAX's persistent compilation cache off) and
warm (the same command again with a filled cache, as a user's rerun).
"""

import inspect
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import common
from tests import user_setups

_OUT = flags.DEFINE_string("out", None, "Write the results as JSON to this file.")
_ONLY = flags.DEFINE_string("only", None, "Comma-separated setup names (default: all).")

REPO = pathlib.Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 15.0

# The Flax docs' model as the user's own file, my_model.py.
MODEL_SOURCE = "from flax import nnx\n\n\n" + inspect.getsource(user_setups.Model)

WINE_MODEL = [
    "--config.model.name=my_model:Model",
    "--config.model.kwargs.din=13",
    "--config.model.kwargs.dmid=64",
    "--config.model.kwargs.dout=3",
]

# Setup name -> (writer of its files into the user's folder or None, debug flags).
SETUPS = {
    "breast_cancer_csv": (
        user_setups.breast_cancer_csv,
        [f"--config={REPO}/configs/custom.py:breast_cancer.csv"],
    ),
    "digit_images": (
        user_setups.digits_folder,
        [f"--config={REPO}/configs/custom.py:digit_images"],
    ),
    "wine_csv_flax_model": (
        user_setups.wine_csv,
        [f"--config={REPO}/configs/custom.py:wine.csv", *WINE_MODEL],
    ),
    "wine_npz": (user_setups.wine_npz, [f"--config={REPO}/configs/custom.py:wine.npz"]),
    "diabetes": (None, [f"--config={REPO}/configs/tasks.py:diabetes"]),
    "multilabel": (None, [f"--config={REPO}/configs/tasks.py:multilabel"]),
}


def run_debug(folder: pathlib.Path, flags_: list[str], cache: str | None) -> dict:
    """One fresh debug process in the user's `folder`: its wall time and summary."""
    env = {**common.compilation_cache_env(cache), "PYTHONPATH": str(folder)}
    workdir = folder / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "workflow.debug", *flags_, f"--workdir={workdir}"]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    return {
        "process_seconds": round(wall, 2),
        "verdict_seconds": round(summary["metrics"]["seconds_to_verdict"], 2),
        "status": summary["status"],
        "findings": [f["id"] for f in summary.get("findings", [])],
    }


def measure(name: str) -> dict:
    """Setup `name` cold, then warm (its cache filled by the cold run's twin)."""
    writer, flags_ = SETUPS[name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        (folder / "my_model.py").write_text(MODEL_SOURCE)
        if writer is not None:
            writer(folder)
        cold = run_debug(folder, flags_, None)
        cache = str(folder / "jax_cache")
        run_debug(folder, flags_, cache)
        warm = run_debug(folder, flags_, cache)
    return {
        "name": name,
        "status": cold["status"],
        "findings": cold["findings"],
        "cold_process_seconds": cold["process_seconds"],
        "cold_verdict_seconds": cold["verdict_seconds"],
        "warm_process_seconds": warm["process_seconds"],
        "warm_verdict_seconds": warm["verdict_seconds"],
    }


def main(argv: list[str]) -> None:
    """Measure every setup and print one table (and --out JSON)."""
    del argv
    names = _ONLY.value.split(",") if _ONLY.value else list(SETUPS)
    rows = []
    print(
        f"{'setup':22s} {'status':9s} {'cold verdict':>12s} {'cold process':>12s} "
        f"{'warm verdict':>12s} {'warm process':>12s}"
    )
    for name in names:
        row = measure(name)
        rows.append(row)
        print(
            f"{name:22s} {row['status']:9s} {row['cold_verdict_seconds']:12.1f} "
            f"{row['cold_process_seconds']:12.1f} {row['warm_verdict_seconds']:12.1f} "
            f"{row['warm_process_seconds']:12.1f}  {','.join(row['findings']) or '-'}",
            flush=True,
        )
    worst = max(row["cold_verdict_seconds"] for row in rows)
    print(f"slowest cold verdict {worst:.1f} s (budget {BUDGET_SECONDS:.0f} s)")
    if _OUT.value:
        result = {
            "load_average_1min": os.getloadavg()[0],
            "budget_seconds": BUDGET_SECONDS,
            "setups": rows,
        }
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
