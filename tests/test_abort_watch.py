"""When real Caffe aborts the process inside a GlogTap, its FATAL line reaches the terminal (engines/pycaffe/
abort_watch.py); otherwise the watcher says nothing. The aborts here are planted (a glog-style line on descriptor 2,
then os.abort()), so these run without Caffe; the last test has real Caffe fail a CHECK."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from squeezecaffe.engines.pycaffe.runtime import last_error

FATAL = "F20261206 08:56:01.967090  9204 blob.cpp:32] Check failed: shape[i] >= 0 (-4 vs. 0) "


def _child(body: str, log: Path) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import os, signal
        from squeezecaffe.engines.pycaffe.runtime import GlogTap
        LOG = {log!r}
        FATAL = {fatal!r}
        """).format(log=str(log), fatal=FATAL) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_an_abort_inside_a_tap_prints_caffes_fatal_line_on_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_text("F20261205 10:00:00.000000  1 old.cpp:1] Check failed: an earlier run's line\n")
    result = _child("""
        with GlogTap(LOG):
            os.write(2, b"I20261206 08:56:01.000000  9204 net.cpp:1] Creating layer c\\n" + FATAL.encode() + b"\\n")
            os.abort()
        """, log)
    assert result.returncode == -6
    assert result.stderr == ("squeezecaffe: error: real Caffe aborted the process: Check failed: shape[i] >= 0 "
                             f"(-4 vs. 0) [blob.cpp:32] (Caffe's log: {log})\n")


def test_a_forked_child_still_alive_does_not_hold_back_the_line(tmp_path: Path) -> None:
    """A worker forked inside the process (DataLoader, build-lmdb) closes its copy of the watcher's pipe, so the line
    comes when the process dies, not when the worker does (here: a worker that would outlive the test's timeout)."""
    pid_file = tmp_path / "worker.pid"
    try:
        result = _child(f"""
            with GlogTap(LOG) as tap:
                if os.fork() == 0:  # the worker: off the test's pipes, then wait far past the timeout
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, 1)
                    os.dup2(null, 2)
                    os.close(tap._saved)  # the terminal's stderr, kept by the tap (the test waits for its end)
                    open({str(pid_file)!r}, "w").write(str(os.getpid()))
                    signal.pause()
                    os._exit(0)
                os.write(2, FATAL.encode() + b"\\n")
                os.abort()
            """, tmp_path / "caffe.log")
        assert "real Caffe aborted the process: Check failed: shape[i] >= 0" in result.stderr
    finally:
        if pid_file.is_file():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("body", [
    # Caffe reported the failure and Python went on (an exception, as our C interface raises): a normal exit
    """
    with GlogTap(LOG):
        os.write(2, FATAL.encode() + b"\\n")
    """,
    # the process died after its taps were done: Caffe's output went to the terminal then, nothing to repeat
    """
    with GlogTap(LOG):
        os.write(2, FATAL.encode() + b"\\n")
    os.abort()
    """,
    # killed inside a tap without a FATAL line since the tap opened (the OOM killer, kill -9)
    """
    with GlogTap(LOG):
        os.write(2, b"I20261206 08:56:01.000000  9204 net.cpp:1] Creating layer c\\n")
        os.kill(os.getpid(), signal.SIGKILL)
    """,
], ids=["normal-exit", "abort-after-the-tap", "killed-without-a-fatal-line"])
def test_the_watcher_says_nothing_unless_caffe_aborted_inside_a_tap(tmp_path: Path, body: str) -> None:
    result = _child(body, tmp_path / "caffe.log")
    assert "real Caffe aborted" not in result.stderr, result.stderr


@pytest.mark.parametrize("line", [FATAL, "F1206 08:56:01.967090  9204 blob.cpp:32] Check failed: shape[i] >= 0 (-4 vs. 0)"])
def test_last_error_reads_both_glog_date_formats(line: str) -> None:
    """glog before 0.6 writes MMDD after the severity, 0.6 and later (Debian 12's) YYYYMMDD."""
    assert last_error(f"I1206 08:56:01.1  1 x.cpp:1] fine\n{line}\n") == "Check failed: shape[i] >= 0 (-4 vs. 0)"


@pytest.mark.caffe
def test_real_caffe_failing_a_check_is_one_line_on_the_terminal(tmp_path: Path) -> None:
    net = tmp_path / "bad.prototxt"
    net.write_text('name: "bad" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 4 '
                   'dim: 4 } } } layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { '
                   'num_output: 2 kernel_size: 9 } }')
    result = _child(f"""
        from squeezecaffe.engines.pycaffe.runtime import import_caffe
        caffe = import_caffe()
        with GlogTap(LOG):
            caffe.Net({str(net)!r}, caffe.TEST)
        """, tmp_path / "caffe.log")
    assert result.returncode != 0
    assert result.stderr.startswith("squeezecaffe: error: real Caffe aborted the process: Check failed: ")
    assert "[blob.cpp:" in result.stderr and str(tmp_path / "caffe.log") in result.stderr
