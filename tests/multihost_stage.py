"""A stage run as `python -m workflow.<stage>` would, that also reports what this process
trained: `python tests/multihost_stage.py STAGE ARGS...`.

After engine.fit returns, one line `MULTIHOST {json}` goes to stderr (a non-zero process's
stdout is silenced by the stage): the process index, how many training examples this process
holds, its dataset shard, the data layout fit used, and a SHA-256 of each of its local copies of
the final parameters (one per local device), for tests/test_multihost.py to compare processes.
Whenever the stage hands a summary to RunDir.write_summary (which writes it on process 0 only),
one line `SUMMARY {json}` with the process index and that summary goes to stderr too. Each file
this process opens for writing, or renames into place, under --workdir gives one line
`WRITE {json}` (the process index and the path relative to --workdir): only process 0 should.
"""

import builtins
import hashlib
import json
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workflow import (
    engine,  # noqa: E402
    files,
)
from workflow.reporting import rundir

_fit = engine.fit
_write_summary = rundir.RunDir.write_summary


def write_summary(run, summary):
    """RunDir.write_summary, then the SUMMARY line (every process)."""
    import jax

    _write_summary(run, summary)
    line = {"process": jax.process_index(), "summary": files.to_jsonable(summary.to_json())}
    print("SUMMARY " + json.dumps(line), file=sys.stderr, flush=True)


def params_digests(params) -> list[str]:
    """SHA-256 of this process's copy of `params` on each of its devices."""
    import jax
    import numpy as np

    leaves = jax.tree.leaves(params)
    digests = {}
    for leaf in leaves:
        for shard in leaf.addressable_shards:
            h = digests.setdefault(shard.device.id, hashlib.sha256())
            h.update(np.ascontiguousarray(np.asarray(shard.data)).tobytes())
    return [digests[device].hexdigest() for device in sorted(digests)]


def fit(task, state, dataset, config, **kwargs):
    """engine.fit, then the MULTIHOST line."""
    import jax

    result = _fit(task, state, dataset, config, **kwargs)
    line = {
        "process": jax.process_index(),
        "train_examples": len(dataset.y_train),
        "shard": dataset.info.get("shard"),
        "data": result.data,
        "params_sha256": params_digests(result.state.params),
        "first_loss": float(result.step_losses[0]) if len(result.step_losses) else None,
        "last_loss": float(result.step_losses[-1]) if len(result.step_losses) else None,
    }
    print("MULTIHOST " + json.dumps(line), file=sys.stderr, flush=True)
    return result


def watch_writes(workdir: str) -> None:
    """A WRITE line for every file opened for writing or renamed into place under `workdir`."""
    import jax

    root = os.path.abspath(workdir)
    real_open, real_os_open, real_replace = builtins.open, os.open, os.replace

    def report(path) -> None:
        path = os.path.abspath(os.fspath(path))
        if path == root or path.startswith(root + os.sep):
            line = {"process": jax.process_index(), "path": os.path.relpath(path, root)}
            print("WRITE " + json.dumps(line), file=sys.stderr, flush=True)

    def watched_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | bytes | os.PathLike) and any(c in mode for c in "wax+"):
            report(file)
        return real_open(file, mode, *args, **kwargs)

    def watched_os_open(path, flags, *args, **kwargs):  # appends (metrics.jsonl) and the lock
        if flags & (os.O_WRONLY | os.O_RDWR):
            report(path)
        return real_os_open(path, flags, *args, **kwargs)

    def watched_replace(src, dst, *args, **kwargs):
        report(dst)
        return real_replace(src, dst, *args, **kwargs)

    builtins.open, os.open, os.replace = watched_open, watched_os_open, watched_replace


if __name__ == "__main__":
    workdir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir="))
    watch_writes(workdir)
    engine.fit = fit  # experiment.train_and_report looks it up when it trains
    rundir.RunDir.write_summary = write_summary
    stage = sys.argv[1]
    sys.argv = [f"workflow/{stage}.py", *sys.argv[2:]]
    runpy.run_module(f"workflow.{stage}", run_name="__main__", alter_sys=True)
