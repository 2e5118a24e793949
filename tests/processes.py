"""Catching a child process in the middle of its work without timing windows: it runs in short slices and is
inspected only while stopped (SIGSTOP, confirmed by waitpid), so what the test sees still holds when it acts.
A slice's length changes how long the wait takes, never what the test finds."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def _stop(proc: subprocess.Popen) -> bool:
    """Stop the child and wait until it is stopped; False if it exited instead (its returncode is then set)."""
    os.kill(proc.pid, signal.SIGSTOP)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    proc.returncode = os.waitstatus_to_exitcode(status)
    return False


def stop_when(proc: subprocess.Popen, ready, slice_s: float = 0.002, limit_s: float = 300.0) -> bool:
    """Run `proc` slice by slice until `ready()` holds while it is stopped: True, with `proc` left stopped (kill or
    continue it); False if it exited first or `limit_s` passed."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not _stop(proc):
            return False
        if ready():
            return True
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(slice_s)
    return False


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a (possibly stopped) child and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
