"""Engine processes end with the server that started them.

vLLM's engine-core process does not notice its parent's death: a server stopped with SIGKILL
(a supervisor's forced stop, the OOM killer, ``kill -9``) leaves ``VLLM::EngineCore`` running,
re-parented, with the model and its KV cache still in memory, and the next server on the machine
finds that memory taken. A process armed here checks its parent once a second; once the parent
is gone it sends itself SIGTERM, which vLLM's engine core takes as a clean shutdown of itself and
its workers, and SIGKILL if it is still alive ``grace_s`` later.

The server arms the processes it starts before it starts the engine (``arm_engine_processes``):
forked ones through an at-fork hook, spawned ones when our vLLM plugin loads in them
(``llava_model.register``). Either way only the server's own children watch it; their children
(vLLM's workers) are left to vLLM, which ends them with their engine core, and a process that
a library forks away from its parent on purpose is left alone.
"""

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

SERVER_PID_ENV = "LLAVA_SERVER_PID"
POLL_S = 1.0
GRACE_S = 30.0

_watching_in: int | None = None  # the pid of the process whose parent is watched
_hooked = False


def watch_parent(poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
    """End this process once its parent has died (idempotent within a process)."""
    global _watching_in
    if _watching_in == os.getpid():
        return
    _watching_in = os.getpid()
    parent = os.getppid()

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("process %d: its parent %d is gone; shutting down", os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=run, name="llava-parent-watch", daemon=True).start()


def arm_engine_processes() -> None:
    """Called by the server process before it starts its engine: the processes it starts from
    now on (vLLM's engine core) watch it. A spawned one finds the server's pid in its
    environment; a forked one runs the same check from an at-fork hook."""
    global _hooked
    os.environ[SERVER_PID_ENV] = str(os.getpid())
    if not _hooked:
        os.register_at_fork(after_in_child=watch_if_started_by_server)
        _hooked = True


def watch_if_started_by_server() -> None:
    """Watch the parent if it is the server (its pid in ``LLAVA_SERVER_PID``)."""
    if os.environ.get(SERVER_PID_ENV) == str(os.getppid()):
        watch_parent()
