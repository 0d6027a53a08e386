"""One search worker on a shared study, as a separate process:
`python search_worker.py URL NAME [HEARTBEAT_SECONDS [GOAL_VAL_ERROR [PRUNE_RUNGS]]]` (a goal of
`none`: without one).

Prints one JSON line: how many trials this process trained, how many records it saw finished,
and the rounds and records themselves (the whole trial table).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.conftest import small_config  # noqa: E402


def search_config(prune_rungs: int = 1):
    """A tiny tabular config with a small two-round search (shared by the search tests);
    unpruned unless `prune_rungs` > 1 (then its refined round, 60 steps, is cut at step 20)."""
    config = small_config("tabular")
    config.search.prune_rungs = prune_rungs
    config.search.num_trials = 8
    config.search.refine_trials = 4
    config.search.trials_per_program = 4
    config.search.rounds = 2
    config.search.epochs = 1.0
    config.search.heartbeat_seconds = 5
    config.search.poll_seconds = 0.2
    return config


def main(
    url: str,
    study_name: str,
    heartbeat_seconds: int | None = None,
    goal: float | None = None,
    prune_rungs: int = 1,
) -> None:
    """Join the study at `url` and work until every round is finished (or a trial reaches the
    val error `goal`)."""
    from workflow import experiment
    from workflow.engine import trials
    from workflow.search import random_search

    config = search_config(prune_rungs)
    if heartbeat_seconds is not None:
        config.search.heartbeat_seconds = heartbeat_seconds
    setup = experiment.prepare(config)
    dataset = setup.dataset
    runner = trials.TrialRunner(config, dataset.input_shape, dataset.num_classes)
    worker = random_search.Search(
        runner, dataset, config, url, study_name, progress=False, goal_val_error=goal
    )
    first = random_search.first_round(config.search, len(dataset.x_train), config.batch_size)
    rounds, records = worker.run(first)
    table = {"rounds": [r.to_json() for r in rounds], "records": records}
    counts = {"trained_here": worker.trained_here, "trials": len(records)}
    print(json.dumps({**counts, **table, "stopped": worker.stopped}))


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        *(int(v) for v in sys.argv[3:4]),
        *(None if v == "none" else float(v) for v in sys.argv[4:5]),
        *(int(v) for v in sys.argv[5:6]),
    )
