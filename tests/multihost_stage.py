"""A stage run as `python -m workflow.<stage>` would, that also reports what this process
trained: `python tests/multihost_stage.py STAGE ARGS...`.

After engine.fit returns, one line `MULTIHOST {json}` goes to stderr (a non-zero process's
stdout is silenced by the stage): the process index, how many training examples this process
holds, its dataset shard, the data layout fit used, and a SHA-256 of each of its local copies of
the final parameters (one per local device), for tests/test_multihost.py to compare processes.
Whenever the stage hands a summary to RunDir.write_summary (which writes it on process 0 only),
one line `SUMMARY {json}` with the process index and that summary goes to stderr too.
"""

import hashlib
import json
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workflow import engine  # noqa: E402
from workflow.reporting import rundir

_fit = engine.fit
_write_summary = rundir.RunDir.write_summary


def write_summary(run, summary):
    """RunDir.write_summary, then the SUMMARY line (every process)."""
    import jax

    _write_summary(run, summary)
    line = {"process": jax.process_index(), "summary": rundir.to_jsonable(summary)}
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


if __name__ == "__main__":
    engine.fit = fit  # experiment.train_and_report looks it up when it trains
    rundir.RunDir.write_summary = write_summary
    stage = sys.argv[1]
    sys.argv = [f"workflow/{stage}.py", *sys.argv[2:]]
    runpy.run_module(f"workflow.{stage}", run_name="__main__", alter_sys=True)
