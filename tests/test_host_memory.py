"""The CPU engine's malloc setting (engines/torchcaffe/host_memory.py): freed memory is reused, not faulted in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

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


def probe(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = probe("apply")
    assert applied == "True"
    pages = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert faults < pages // 100, f"{faults} page faults re-using 4 x 64 MiB ({pages} pages)"


def test_opt_out_leaves_malloc_alone():
    applied, _ = probe("apply", SQUEEZECAFFE_MALLOC="system")
    assert applied == "False"


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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
