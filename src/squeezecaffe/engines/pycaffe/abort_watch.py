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
# Messages are NUL-terminated bytes (a path may hold any other byte): b"tap OFFSET PATH", b"done", b"exit".
_WATCHER = r"""
import os, re, sys
path, offset, buffer = None, 0, b""
while chunk := sys.stdin.buffer.read1(65536):
    *messages, buffer = (buffer + chunk).split(b"\0")
    for message in messages:
        if message == b"exit":
            sys.exit(0)
        if message == b"done":
            path = None
        elif message.startswith(b"tap "):
            start, _, path = message[4:].partition(b" ")
            offset = int(start)
if path is None:
    sys.exit(0)
try:
    with open(path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
except OSError:
    sys.exit(0)
found = re.findall(r"^F(?:\d{4}){1,2} [^ ]+ +\d+ ([^\]]+)\] (.*)$", text, re.M)  # runtime._ERROR's prefix
if found:
    where, what = found[-1]
    sys.stderr.write(f"squeezecaffe: error: real Caffe aborted the process: {what.strip()} [{where}] "
                     f"(Caffe's log: {os.fsdecode(path)})\n")
"""

_proc: subprocess.Popen | None = None  # kept: a collected Popen of a running process warns at shutdown
_pipe: int | None = None  # the write end of the watcher's stdin (a bare descriptor: nothing closes it behind us)
_owner = 0  # the pid of the process that started the watcher


def _send(message: bytes) -> None:
    global _pipe
    if _pipe is None or os.getpid() != _owner:
        return
    try:
        os.write(_pipe, message + b"\0")  # a few bytes: one write, atomic on a pipe
    except OSError:  # the watcher is gone (BrokenPipeError): taps go on without it
        _pipe = None


def _goodbye() -> None:
    _send(b"exit")


def _forget_in_child() -> None:
    """A forked child (a DataLoader or converter worker) closes its copy of the pipe: the watcher must see the end
    of the pipe when the process it watches dies, not when the last of its children does."""
    global _pipe
    if _pipe is not None:
        os.close(_pipe)
        _pipe = None


def tap_opened(log_path: str, offset: int) -> None:
    """Called before descriptor 2 is redirected (the watcher inherits the terminal's stderr)."""
    global _proc, _pipe, _owner
    if _proc is None:
        read_end, write_end = os.pipe()
        try:
            _proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHER], stdin=read_end,
                                     stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            os.close(write_end)
            return
        finally:
            os.close(read_end)
        _pipe, _owner = write_end, os.getpid()
        atexit.register(_goodbye)
        os.register_at_fork(after_in_child=_forget_in_child)
    _send(b"tap %d " % offset + os.fsencode(os.path.abspath(log_path)))


def tap_closed() -> None:
    _send(b"done")
