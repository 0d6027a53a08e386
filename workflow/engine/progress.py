"""Console progress for long work: a bar that moves at least once a second, with one rate.

A compiled call can run for a long time (the first call compiles; a slow model's K steps), so
the bar does not wait for the calls to return: a daemon thread redraws it every REFRESH_SECONDS
(the elapsed time and the phase move while the program compiles), and advances it by each step
whose output the device has finished (`watch`: outputs handed over as the loop dispatches them,
polled with `jax.Array.is_ready`, never waited on). The caller's `advance_to` then sets the
exact count when a call returns. The rate is tqdm's own, of the unit counted.
"""

import threading
from collections import deque
from typing import Any

import jax

REFRESH_SECONDS = 0.5


class Progress:
    """A tqdm bar of `total` `unit`s, redrawn every REFRESH_SECONDS while open."""

    def __init__(self, total: int, desc: str, unit: str, *, enabled: bool, initial: int = 0):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self._desc = desc
        self._bar = tqdm(
            total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=False
        )
        self._lock = threading.Lock()
        self._pending: deque = deque()  # outputs of dispatched steps not yet counted
        self._stop = threading.Event()
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def watch(self, output: Any) -> None:
        """Count one step once `output` (that step's result, on the device) is ready."""
        if self.enabled:
            leaves = jax.tree.leaves(output)
            with self._lock:
                self._pending.append(leaves[0] if leaves else None)

    def advance_to(self, count: int, **postfix: str) -> None:
        """Set the count to `count` (the work done when a call returned), with a postfix."""
        if not self.enabled:
            return
        with self._lock:
            self._pending.clear()
            self._bar.update(count - self._bar.n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()

    def advance(self, count: int) -> None:
        """Add `count` units done (a call that returned)."""
        if self.enabled:
            with self._lock:
                self._pending.clear()
                self._bar.update(count)

    def set_total(self, total: int) -> None:
        """Change the work's total (more or less of it than planned turned out to be left)."""
        if self.enabled:
            with self._lock:
                self._bar.total = total
                self._bar.refresh()

    def phase(self, text: str = "") -> None:
        """What the work is doing now ("compiling"), shown after the bar's name ("": nothing)."""
        if self.enabled:
            with self._lock:
                described = f"{self._desc} ({text})" if text else self._desc
                self._bar.set_description_str(described, refresh=True)

    def _tick(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            with self._lock:
                done = 0
                while self._pending and _ready(self._pending[0]):
                    self._pending.popleft()
                    done += 1
                if done:
                    self._bar.update(done)
                self._bar.refresh()

    def close(self) -> None:
        """Stop redrawing and remove the bar."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ready(leaf: Any) -> bool:
    """Whether a watched output is computed (non-array outputs are at once)."""
    is_ready = getattr(leaf, "is_ready", None)
    try:
        return True if is_ready is None else bool(is_ready())
    except RuntimeError:  # a deleted (donated) buffer was computed before it was consumed
        return True
