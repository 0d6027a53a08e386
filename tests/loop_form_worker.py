"""engine.fit in both loop forms on 8 simulated CPU devices, as a separate process (XLA_FLAGS
must be set before jax is imported): `python loop_form_worker.py`. Prints one JSON line per
data layout: whether the two forms gave the same records, losses and final state bit for bit.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.conftest import small_config  # noqa: E402

# (name, parallel.params, parallel.data): the layouts engine.fit places state and data in.
LAYOUTS = (
    ("replicated", "replicated", "replicated"),
    ("sharded", "sharded", "replicated"),
    ("per_host", "replicated", "per_host"),
)


def run(layout: tuple[str, str, str], form: str):
    """40 steps of the MLP on 8 devices in `form`: the FitResult."""
    from workflow import engine, experiment

    _, params, data = layout
    config = small_config(num_steps=40, batch_size=64, checkpoint_every=0, eval_every=20)
    config.model.hidden_sizes = (64,)  # a hidden layer the 8 devices divide, for "sharded"
    config.parallel.params = params
    config.parallel.data = data
    config.loop = form
    setup = experiment.prepare(config)
    return engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)


def compare(layout: tuple[str, str, str]) -> dict:
    """Both forms' runs in one layout, compared."""
    import jax
    import numpy as np

    from workflow.engine import loop_form

    scan, step = run(layout, "scan"), run(layout, "step")

    def leaves(result):
        return [np.asarray(leaf) for leaf in jax.device_get(jax.tree.leaves(result.state))]

    def records(result):
        return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in result.records]

    return {
        "case": layout[0],
        "forms": [scan.loop["form"], step.loop["form"]],
        "devices": len(jax.tree.leaves(step.state.params)[0].sharding.device_set),
        # The step form waits for each step over several CPU devices (see loop_form._Programs).
        "one_at_a_time": loop_form._over_cpu_devices(step.state),
        "same_records": records(scan) == records(step),
        "same_losses": bool(np.array_equal(scan.step_losses, step.step_losses)),
        "same_state": all(
            np.array_equal(a, b) for a, b in zip(leaves(scan), leaves(step), strict=True)
        ),
        "scan_losses": [float(v) for v in scan.step_losses],
        "step_losses": [float(v) for v in step.step_losses],
        "val_loss": [scan.records[-1]["val_loss"], step.records[-1]["val_loss"]],
    }


if __name__ == "__main__":
    for layout in LAYOUTS:
        print(json.dumps(compare(layout)), flush=True)
