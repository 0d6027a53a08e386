"""Search workers on a real PostgreSQL server: a fresh study created by many at once, trials
claimed exactly once, a worker killed with kill -9 and its trials rerun once.

The server is Debian's `postgresql` package (`.ci/run` installs it when it runs as root),
started here as an unprivileged user in a temporary directory on a free port; the tests are
skipped only when its programs or the psycopg2 driver are missing.
"""

import concurrent.futures
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from tests.conftest import ROOT
from workflow import killpoints

HERE = os.path.dirname(os.path.abspath(__file__))


def _server_bin() -> str | None:
    """The folder of initdb and pg_ctl (Debian keeps them off the PATH), or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return os.path.dirname(os.path.realpath(on_path))
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    """`command` run as `nobody` when this is root (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    """A running PostgreSQL server: a function that makes a fresh database and returns its URL."""
    bindir = _server_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg2")
    root = tempfile.mkdtemp(prefix="pg-")
    os.chmod(root, 0o777)
    data, port = os.path.join(root, "data"), _free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(
        _as_server_user(
            [f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"]
        ),
        **run,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", f"{root}/log", "-w", "start"]
    subprocess.run(_as_server_user(start), **run)
    made = []

    def fresh_database(name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        connection.close()
        made.append(name)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"

    try:
        yield fresh_database
    finally:
        subprocess.run(_as_server_user([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]))
        shutil.rmtree(root, ignore_errors=True)


def _worker(url: str, name: str, *, kill_at: str | None = None) -> subprocess.Popen:
    """tests/search_worker.py on the study `name` at `url` (heartbeat 1 s)."""
    env = {k: v for k, v in os.environ.items() if k != killpoints.ENV}
    if kill_at:
        env[killpoints.ENV] = kill_at
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "search_worker.py"), url, name, "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_workers_creating_one_fresh_postgres_study_at_once_all_succeed(postgres):
    import optuna

    from workflow.search import random_search

    url = postgres("fresh")
    barrier = threading.Barrier(6)

    def open_and_create(_):
        # Each its own engine and connections, all racing on the empty database's schema.
        barrier.wait()
        storage = random_search.open_storage(url, 5)
        study = optuna.create_study(storage=storage, study_name="t/round-0", load_if_exists=True)
        return study._study_id

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(open_and_create, range(6)))
    assert len(set(ids)) == 1  # one study, found by all
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["t/round-0"]


@pytest.mark.slow
def test_postgres_workers_lose_and_repeat_no_trial_when_one_is_killed(postgres, tmp_path):
    import optuna

    # The same search by one worker alone, on SQLite: the table every worker must end with.
    reference = _worker(f"sqlite:///{tmp_path}/study.db", "s")
    url = postgres("shared")
    # One worker kills itself (SIGKILL) holding the first batch it claimed on the fresh database;
    # then two start at once: the dead worker's trials are failed and their slots rerun. (Started
    # together with the others, the doomed worker could find every batch claimed and never die.)
    doomed = _worker(url, "s", kill_at="search.claimed")
    _, err = doomed.communicate(timeout=600)
    assert doomed.returncode == -signal.SIGKILL, err[-2000:]
    workers = [_worker(url, "s") for _ in range(2)]
    outputs = []
    for proc in workers:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]
    alone = json.loads(out.strip().splitlines()[-1])
    states = optuna.trial.TrialState
    for name, size in (("s/round-0", 8), ("s/round-1", 4)):
        trials = optuna.load_study(study_name=name, storage=url).trials
        done = [t for t in trials if t.state == states.COMPLETE]
        slots = sorted(t.user_attrs["slot"] for t in done)
        assert slots == list(range(size))  # no trial lost, none repeated
        assert not [t for t in trials if t.state == states.RUNNING]
    reclaimed = [
        t
        for t in optuna.load_study(study_name="s/round-0", storage=url).trials
        if t.state == states.FAIL
    ]
    assert reclaimed  # the killed worker's batch, failed and given new trials
    assert sum(o["trained_here"] for o in outputs) == 12  # each trial trained once
    for output in outputs:  # the one worker's table and best, whoever trained what
        assert output["rounds"] == alone["rounds"]
        assert output["records"] == alone["records"]
