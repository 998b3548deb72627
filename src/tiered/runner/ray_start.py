"""Ray for one batch run: started, and its answers pulled, on threads of their own.

A local Ray takes seconds to start (its own processes, then a Python worker per actor);
:class:`RayStart` starts it (``ray.init``) on a thread of its own, so the run learns on
its sample and answers partitions in this process meanwhile. The thread stays alive
until :meth:`RayStart.close`: Ray's processes are told to die with the thread that
started them, so it must outlive the run; it shuts Ray down on its way out (and when
the run no longer needs a Ray still starting, the run does not wait for it). A Ray the
caller had already started is used as it is and left running.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from tiered.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

_QUIET: dict[str, Any] = {
    "include_dashboard": False,
    "log_to_driver": False,
    "logging_level": logging.ERROR,
}


class RayStart:
    """Ray starting in the background: :meth:`ready` polls, :meth:`wait` blocks.

    ``address``: None starts a local Ray with every CPU of this machine; ``auto`` or
    ``ray://HOST:PORT`` joins a running cluster.
    """

    def __init__(self, address: str | None) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                "tiered batch runs on Ray: pip install 'tiered[ray]' (or pass --in-process)",
                field="--ray",
            )
        self.address = address
        self.cpus = 0.0
        self.startup_s = 0.0  # how long Ray took to start: what its actors may take too
        self._t0 = time.perf_counter()
        self._error: BaseException | None = None
        self._up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tiered-ray-start", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        own = False
        try:
            import ray
            import ray.data

            if not ray.is_initialized():  # else the caller's own session: leave it running
                if self.address is None:
                    ray.init(num_cpus=os.cpu_count() or 1, **_QUIET)
                else:
                    ray.init(address=self.address, **_QUIET)
                own = True
                logging.getLogger("ray.data").setLevel(logging.ERROR)
                ray.data.DataContext.get_current().enable_progress_bars = False
            self.cpus = _cpus(ray)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            self._error = ConfigError(f"cannot reach Ray at {self.address}: {exc}", field="--ray")
        except BaseException as exc:  # handed to the run's thread by wait()
            self._error = exc
        finally:
            self.startup_s = time.perf_counter() - self._t0
            self._up.set()
        if own:
            self._stop.wait()
            ray.shutdown()

    def ready(self) -> bool:
        """Whether Ray is up (or failed to start: :meth:`wait` raises why)."""
        return self._up.is_set()

    def wait(self) -> float:
        """Block until Ray is up; its CPUs."""
        self._up.wait()
        if self._error is not None:
            raise self._error
        return self.cpus

    def close(self) -> None:
        """Stop a Ray started here. One still starting (a start cannot be cut short) is
        stopped by its thread once it is up, or dies with this process if it ends first:
        the run need not wait for a Ray it no longer needs."""
        self._stop.set()
        if self._up.is_set():
            self._thread.join()


def _cpus(ray: Any) -> float:
    """The CPUs of the Ray session (Ray's own function is untyped)."""
    resources: dict[str, float] = ray.cluster_resources()
    return float(resources.get("CPU", 1))


class RayFeed:
    """Ray's answers, pulled on a thread of their own (Ray keeps working while this
    process answers a partition) into a queue this process writes from."""

    def __init__(self, ds: Any) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ds = ds
        self._closing = threading.Event()
        self.done = False
        self._thread = threading.Thread(target=self._pull, name="tiered-ray-feed", daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        batches = self._ds.iter_batches(batch_size=None, batch_format="pyarrow")
        try:
            for table in batches:
                self._queue.put(table)
                if self._closing.is_set():
                    break
        except BaseException as exc:  # raised in the run's thread by next()/ready()
            self._queue.put(exc)
        finally:
            self._queue.put(_END)

    def _take(self, item: Any) -> pa.Table | None:
        if item is _END:
            self.done = True
            return None
        if isinstance(item, BaseException):
            self.done = True
            raise item
        table: pa.Table = item
        return table

    def next(self, timeout: float) -> pa.Table | None:
        """The next table from Ray (None: none within ``timeout`` seconds, or the end)."""
        if self.done:
            return None
        try:
            return self._take(self._queue.get(timeout=timeout))
        except queue.Empty:
            return None

    def ready(self) -> list[pa.Table]:
        """The tables that came from Ray and wait to be written."""
        out = []
        while not self.done:
            try:
                table = self._take(self._queue.get_nowait())
            except queue.Empty:
                break
            if table is not None:
                out.append(table)
        return out

    def close(self) -> None:
        """After the end (the run waits for it: Ray is shut down after its pipeline, never
        under it); cut short (an error, Ctrl-C), the puller ends when Ray shuts down."""
        self._closing.set()
        if self.done:
            self._thread.join()


_END = object()


__all__ = ["RayFeed", "RayStart"]
