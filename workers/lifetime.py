"""Worker process lifetime: exit with the process that started us, and ask a training run to
hand off when the worker stops."""

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_shutting_down

logger = logging.getLogger(__name__)

# `licchavi serve` names itself here, so the worker it starts stops when serve dies, even by
# SIGKILL (SIGTERM and SIGINT to serve stop the worker through the supervisor).
PARENT_ENV = "LICCHAVI_WORKER_PARENT_PID"  # the name app/cli/supervisor.py sets
# Sent by the worker's main process to its pool processes at a warm shutdown, and delivered by the
# kernel to a pool process whose main process died: a run in training checkpoints and hands off.
# SIGURG because its default action is to do nothing, and billiard leaves it alone: with a
# synchronous broker (the embedded one) it points SIGUSR1, SIGUSR2 and most others at its own
# exit handler after our initialisation ran.
HANDOFF_SIGNAL = signal.SIGURG
PR_SET_PDEATHSIG = 1

handoff_requested = threading.Event()
training = threading.Event()
_parent_pid: int | None = None


def exit_with_parent(signum: int) -> bool:
    """Have the kernel send `signum` to this process when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
        return False
    return True


def orphaned() -> bool:
    """Whether the process that this pool process was forked from is gone."""
    return _parent_pid is not None and os.getppid() != _parent_pid


def exit_if_orphaned() -> None:
    """End a pool process whose worker died: nobody would ever give it work again."""
    if orphaned():
        logger.warning("worker process gone; pool process %s exits", os.getpid())
        os._exit(1)


def _on_handoff_signal(signum: int, frame: Any) -> None:
    handoff_requested.set()
    if not training.is_set():
        exit_if_orphaned()  # an idle orphan has nothing to hand off


@worker_init.connect
def _main_process_exits_with_its_parent(**_: Any) -> None:
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit() or int(parent) != os.getppid():
        return  # started by hand or by a process manager: its own lifetime
    if exit_with_parent(signal.SIGTERM) and os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect


@worker_shutting_down.connect
def _ask_runs_to_hand_off(**_: Any) -> None:
    # Runs in the main process's signal handler. The solo and threads pools train here; prefork
    # pool processes are told with a signal (billiard knows its live children).
    import billiard.process

    handoff_requested.set()
    for child in billiard.process.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, HANDOFF_SIGNAL)


@worker_process_init.connect
def _pool_process_follows_its_worker(**_: Any) -> None:
    global _parent_pid
    _parent_pid = os.getppid()
    signal.signal(HANDOFF_SIGNAL, _on_handoff_signal)
    if exit_with_parent(HANDOFF_SIGNAL) and orphaned():
        os._exit(1)
