"""Named points at which a test or the fault campaign (benchmarks/faults.py) kills this process
with SIGKILL, to check that whatever was written up to there resumes exactly.

    WORKFLOW_KILL_AT=search.told:3 python -m workflow.tune ...

kills the process the third time it reaches `killpoints.reach("search.told")` (`NAME` alone:
the first time). Without the variable (always, outside such checks) a point does nothing.
The points: see POINTS.
"""

import collections
import os
import signal

ENV = "WORKFLOW_KILL_AT"

POINTS = {
    "search.created": "a round's missing slot trials were just created (before any is claimed)",
    "search.popped": "one trial of a batch was claimed, before this worker wrote its name on it",
    "search.claimed": "a batch was claimed and named, before it trains",
    "search.trained": "a batch was trained, before any of its results is recorded",
    "search.told": "one trial's result was recorded (the batch's others may not be yet)",
}

_hits: collections.Counter = collections.Counter()


def parse(spec: str) -> tuple[str, int]:
    """(point, hit count) of a WORKFLOW_KILL_AT value `NAME[:COUNT]`; ValueError if invalid."""
    name, _, count = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown point; one of {', '.join(POINTS)}")
    hits = int(count) if count else 1
    if hits < 1:
        raise ValueError(f"{ENV}={spec!r}: the count must be a positive integer")
    return name, hits


def reach(point: str) -> None:
    """Kill this process here when WORKFLOW_KILL_AT names `point` and this is its counted hit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, hits = parse(spec)
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] == hits:
        os.kill(os.getpid(), signal.SIGKILL)
