"""Runs a Celery worker as a child process beside `licchavi serve`, restarting it if it dies."""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

logger = logging.getLogger(__name__)

# The environment variable through which the worker learns its supervisor's pid (read by
# workers/lifetime.py: app/ does not import workers/).
PARENT_ENV = "LICCHAVI_WORKER_PARENT_PID"


def worker_command(queues: str, concurrency: int, pool: str, loglevel: str = "INFO") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app:celery_app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


class WorkerSupervisor:
    """Keeps one worker process alive until `stop()`; restarts it with a back-off when it exits."""

    def __init__(self, command: list[str], *, max_backoff_seconds: float = 30.0) -> None:
        self.command = command
        self.max_backoff_seconds = max_backoff_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            # Its own process group, so stop() can end the pool processes with it; the worker
            # also learns our pid, and exits if we die without stopping it (kill -9).
            self.process = subprocess.Popen(
                self.command,
                env={**os.environ, PARENT_ENV: str(os.getpid())},
                process_group=0,
            )
            code = self.process.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            if time.monotonic() - started > 60:
                backoff = 1.0
            logger.warning("worker exited with %s; restarting in %.0f s", code, backoff)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_seconds)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the worker and every process it started: SIGTERM (a warm shutdown, in which a
        training run checkpoints and hands off), then SIGKILL to its whole process group."""
        self._stopping.set()
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("worker did not stop within %.0f s; killing it", timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # pool processes left behind, if any
            process.wait()
        self._thread.join(timeout)
