"""Processes started under the server end when it dies, forked or spawned; others do not."""

import os
import signal
import subprocess
import sys

import psutil

from llava_model.parent_watch import SERVER_PID_ENV

# Stands for the server: arms its children, then starts one forked child (as vLLM forks its
# engine core on CPUs), one spawned child that loads our plugin's check (as a spawned engine
# core does), and one spawned child that does not (a control: nothing ends it).
SERVER = r"""
import multiprocessing, subprocess, sys, time
from llava_model.parent_watch import arm_engine_processes
arm_engine_processes()
forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))
forked.start()
watched = subprocess.Popen([sys.executable, "-c", "import time; from llava_model.parent_watch import "
                            "watch_if_started_by_server as w; w(); time.sleep(300)"])
unwatched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(forked.pid, watched.pid, unwatched.pid, flush=True)
time.sleep(300)
"""


def test_children_of_a_killed_server_end_and_live_ones_are_left_alone():
    env = {k: v for k, v in os.environ.items() if k != SERVER_PID_ENV}
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, env=env)
    children = []
    try:
        children = [psutil.Process(int(pid)) for pid in server.stdout.readline().split()]
        assert len(children) == 3
        forked, watched, unwatched = children
        # While the server lives, nothing fires (the watch checks once a second).
        assert not psutil.wait_procs(children, timeout=3)[0]
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        _, alive = psutil.wait_procs([forked, watched], timeout=30)
        assert not alive, alive
        assert unwatched.is_running()  # the control: without the watch, a child outlives its parent
    finally:
        if server.poll() is None:
            server.kill()
        for p in children:
            if p.is_running():
                p.kill()
