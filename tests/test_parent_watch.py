"""The server's children end when it dies, forked or spawned; other processes do not."""

import os
import signal
import subprocess
import sys
import time

import psutil

from llava_model.parent_watch import SERVER_PID_ENV
from tests.server_proc import still_running, wait_ended

# Stands for the server: arms its children, then starts one forked child (as vLLM forks its
# engine core where it does not force spawn), one spawned child that runs our plugin's check (as a
# spawned engine core does), one spawned child that does not (a control: nothing ends it), and a
# forked child that forks a grandchild and exits at once (a daemon's double fork: the grandchild
# is no child of the server's and must not be ended when its own parent goes).
SERVER = r"""
import multiprocessing, os, subprocess, sys, time
from llava_model.parent_watch import arm_engine_processes

def double_fork(write_end):
    ready_read, ready_write = os.pipe()
    grandchild = os.fork()
    if grandchild == 0:
        os.write(ready_write, b"1")  # the at-fork hooks have run: its parent is still alive
        time.sleep(300)
        os._exit(0)
    os.read(ready_read, 1)
    os.write(write_end, str(grandchild).encode())
    os._exit(0)

arm_engine_processes()
fork = multiprocessing.get_context("fork")
forked = fork.Process(target=time.sleep, args=(300,))
forked.start()
watched = subprocess.Popen([sys.executable, "-c", "import time; from llava_model.parent_watch import "
                            "watch_if_started_by_server as w; w(); time.sleep(300)"])
unwatched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
read_end, write_end = os.pipe()
middle = fork.Process(target=double_fork, args=(write_end,))
middle.start()
grandchild = int(os.read(read_end, 32))
print(forked.pid, watched.pid, unwatched.pid, grandchild, flush=True)
time.sleep(300)
"""


def test_children_of_a_killed_server_end_and_live_ones_are_left_alone():
    env = {k: v for k, v in os.environ.items() if k != SERVER_PID_ENV}
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, env=env)
    children = []
    try:
        children = [psutil.Process(int(pid)) for pid in server.stdout.readline().split()]
        assert len(children) == 4
        forked, watched, unwatched, grandchild = children
        # While the server lives, nothing fires (the watch checks once a second), and the
        # grandchild outlives its own parent.
        time.sleep(3)
        assert still_running(children) == children
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert not wait_ended([forked, watched], timeout=30)
        # The control (without the watch a child outlives its parent) and the grandchild still run.
        assert still_running([unwatched, grandchild]) == [unwatched, grandchild]
    finally:
        if server.poll() is None:
            server.kill()
        for p in still_running(children):
            p.kill()
