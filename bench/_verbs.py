"""Running `squeezecaffe` verbs from a benchmark script as a user types them: one home for the subprocess call,
its timing and its one-line failure. (Scripts run as `python bench/<name>.py`, so this folder is on sys.path.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def run_verb(argv: list[str], log: Path | None = None) -> tuple[str, float]:
    """`python -m squeezecaffe ARGV`; returns its stdout (empty when `log` takes stdout and stderr) and the wall
    seconds. A failure ends the benchmark with one line naming the command and, with `log`, the file to read."""
    started = time.perf_counter()
    if log is not None:
        with log.open("w") as out:
            done = subprocess.run([sys.executable, "-m", "squeezecaffe", *argv], stdout=out, stderr=subprocess.STDOUT,
                                  text=True, check=False)
        why = f"see {log}"
    else:
        done = subprocess.run([sys.executable, "-m", "squeezecaffe", *argv], capture_output=True, text=True,
                              check=False)
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
    if done.returncode != 0:
        sys.exit(f"squeezecaffe {' '.join(argv)} failed (exit {done.returncode}): {why}")
    return done.stdout or "", time.perf_counter() - started
