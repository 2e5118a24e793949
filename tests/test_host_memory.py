"""The CPU engine's malloc setting (engines/torchcaffe/host_memory.py): freed memory is reused, not faulted in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")

# malloc, touch and free 64 MiB a few times, then count the minor page faults of the last rounds: memory that
# went back to the kernel at each free (a chunk this size is mmap'd by default) is faulted in again, page by page.
PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    from squeezecaffe.engines.torchcaffe.host_memory import keep_freed_host_memory
    applied = keep_freed_host_memory() if sys.argv[1] == "apply" else None
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def round_trip():
        p = libc.malloc(64 * 2**20)
        ctypes.memset(p, 1, 64 * 2**20)
        libc.free(p)
    round_trip()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        round_trip()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


REPO = Path(__file__).resolve().parents[1]


def probe(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k != "SQUEEZECAFFE_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env}, capture_output=True,
                         text=True, check=True, cwd=REPO).stdout.split()
    return out[0], int(out[1])


def huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = probe("apply")
    assert applied == "True"
    pages = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert faults < pages // 100, f"{faults} page faults re-using 4 x 64 MiB ({pages} pages)"
    if not huge_pages_always():  # the control: glibc's default faults every page in again (in 4 KiB pages)
        _, control = probe("system")
        assert control > pages // 2, f"glibc's default re-faulted only {control} of {pages} pages"


def test_opt_out_leaves_malloc_alone():
    applied, faults = probe("apply", SQUEEZECAFFE_MALLOC="system")
    assert applied == "False"
    if not huge_pages_always():
        pages = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
        assert faults > pages // 2, "SQUEEZECAFFE_MALLOC=system still kept the freed memory"


def test_the_cpu_solver_applies_it():
    code = textwrap.dedent("""
        from squeezecaffe.engines.torchcaffe import host_memory
        from squeezecaffe.engines.torchcaffe.solver import Solver
        from squeezecaffe.proto import parse_text, pb
        from tests.test_engine_solver import MLP
        assert host_memory._applied is None
        sp = parse_text('base_lr: 0.1 lr_policy: "fixed" max_iter: 1', pb.SolverParameter)
        sp.net_param.CopyFrom(parse_text(MLP, pb.NetParameter))
        Solver(sp)
        print(host_memory._applied)
    """)
    environ = {k: v for k, v in os.environ.items() if k != "SQUEEZECAFFE_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env=environ).stdout
    assert out.strip() == "True"


def test_a_misspelt_choice_is_one_line_naming_the_variable(tmp_path):
    from tests.test_engine_solver import MLP

    solver = tmp_path / "solver.prototxt"
    solver.write_text('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 net_param {' + MLP + "}")
    run = subprocess.run([sys.executable, "-m", "squeezecaffe", "solve", str(solver)], capture_output=True, text=True,
                         env={**os.environ, "SQUEEZECAFFE_MALLOC": "sytem"}, cwd=REPO)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "squeezecaffe: error: SQUEEZECAFFE_MALLOC='sytem': use 'system' (glibc's default malloc) or 'kept' (the "
        "default: freed memory kept for the next iteration)"]
