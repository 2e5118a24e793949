"""One line on the terminal when real Caffe aborts the process.

Caffe stops on a failed CHECK or a FATAL log line with abort(): no Python code runs after it (no exception, no
`finally`), and what glog said went to the log file GlogTap pointed descriptor 2 at, not to the terminal. The
user saw only the shell's "Aborted". So the first tap starts a small watcher process that keeps the terminal's
stderr: each tap tells it which log it writes and from which offset, and says when it is done. If the pipe closes
while a tap is open and the log holds a FATAL line written since, the process died inside Caffe; the watcher
prints that line (with Caffe's source location and the log's path). A normal exit says so first and prints
nothing; a death outside a tap, or without a FATAL line (SIGKILL), prints nothing either.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

# The watcher: standard library only, started with -I -S so that nothing of the environment slows or changes it.
_WATCHER = r"""
import re, sys
path, offset = None, 0
for line in sys.stdin:
    if line == "exit\n":
        sys.exit(0)
    if line == "done\n":
        path = None
    else:
        start, _, path = line.rstrip("\n").partition("\t")
        offset = int(start)
if path is None:
    sys.exit(0)
try:
    with open(path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
except OSError:
    sys.exit(0)
found = re.findall(r"^F(?:\d{4}){1,2} [^ ]+ +\d+ ([^\]]+)\] (.*)$", text, re.M)
if found:
    where, what = found[-1]
    sys.stderr.write(f"squeezecaffe: error: real Caffe aborted the process: {what.strip()} [{where}] "
                     f"(Caffe's log: {path})\n")
"""

_pipe = None  # the watcher's stdin, written by the process that started it
_owner = 0  # that process's pid: a forked child must neither write to it nor say goodbye for its parent


def _send(line: str) -> None:
    global _pipe
    if _pipe is None or os.getpid() != _owner:
        return
    try:
        _pipe.write(line)
        _pipe.flush()
    except (BrokenPipeError, ValueError, OSError):  # the watcher is gone: taps go on without it
        _pipe = None


def _goodbye() -> None:
    _send("exit\n")


def tap_opened(log_path: str, offset: int) -> None:
    """Called before descriptor 2 is redirected (the watcher inherits the terminal's stderr)."""
    global _pipe, _owner
    if _pipe is None:
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHER], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, text=True, start_new_session=True)
        except OSError:
            return
        _pipe, _owner = proc.stdin, os.getpid()
        atexit.register(_goodbye)
    _send(f"{offset}\t{os.path.abspath(log_path)}\n")


def tap_closed() -> None:
    _send("done\n")
