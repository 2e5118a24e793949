"""Caffe through our C interface (libsqueezecaffe_capi.so, built with every Caffe recipe) and ctypes.

pycaffe's `_caffe` extension is tied to the CPython minor version and the libboost_python it was built with, so a
Caffe build carried to another machine (the GPU machine runs another Python) cannot be imported there. The C
interface has no such tie. `CaffeLibrary` offers the part of pycaffe's module API that squeezecaffe uses - `Net`
(blobs, params, inputs/outputs, forward/backward/reshape, copy_from/share_with/save), `get_solver` (net, test_nets,
iter, step, snapshot, restore), the modes, the device and the seed - so the engines run on either binding
unchanged. What the C interface reports (an unreadable file, a C++ exception) raises RuntimeError, as Boost.Python
does, which the callers turn into one line; Caffe's own CHECK failures end the process, as they do under pycaffe.

A CUDA build needs the CUDA runtime libraries (recipe.CUDA_RUNTIME_SONAMES). A cached build finds them through its
RPATH (the toolkit it was linked against); a bundle carries none and takes the ones PyTorch's CUDA wheels installed
(site-packages/nvidia/*/lib), loaded here first (`preload_cuda`) so that the dynamic linker matches libcaffe's
dependencies by name. Python objects hold Caffe's memory through one owner object per C handle, never through each
other, so a net is freed as soon as nothing uses it (no reference cycle waits for the garbage collector).
"""

from __future__ import annotations

import ctypes
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from squeezecaffe.caffe_build.recipe import CUDA_RUNTIME_SONAMES
from squeezecaffe.fileio import first_line

API_VERSION = 1  # what sqc_api_version() must return (squeezecaffe_capi.cpp)

_P = ctypes.c_void_p
_S = ctypes.c_char_p
_I = ctypes.c_int
_F = ctypes.POINTER(ctypes.c_float)
# name: (result type, argument types)
_SIGNATURES: dict[str, tuple[object, list]] = {
    "sqc_api_version": (_I, []), "sqc_last_error": (_S, []), "sqc_cuda_built": (_I, []),
    "sqc_cuda_device_count": (_I, []), "sqc_set_mode_cpu": (None, []), "sqc_set_mode_gpu": (None, []),
    "sqc_set_device": (_I, [_I]), "sqc_set_random_seed": (None, [ctypes.c_uint]),
    "sqc_net_open": (_P, [_S, _I, _S]), "sqc_net_free": (None, [_P]), "sqc_net_forward": (_I, [_P, _F]),
    "sqc_net_backward": (_I, [_P]), "sqc_net_reshape": (_I, [_P]), "sqc_net_clear_param_diffs": (_I, [_P]),
    "sqc_net_copy_from": (_I, [_P, _S]), "sqc_net_share_with": (_I, [_P, _P]), "sqc_net_save": (_I, [_P, _S]),
    "sqc_net_blob_count": (_I, [_P]), "sqc_net_blob_name": (_S, [_P, _I]), "sqc_net_blob": (_P, [_P, _I]),
    "sqc_net_input_count": (_I, [_P]), "sqc_net_input_index": (_I, [_P, _I]),
    "sqc_net_output_count": (_I, [_P]), "sqc_net_output_index": (_I, [_P, _I]),
    "sqc_net_layer_count": (_I, [_P]), "sqc_net_layer_name": (_S, [_P, _I]),
    "sqc_net_layer_param_count": (_I, [_P, _I]), "sqc_net_layer_param": (_P, [_P, _I, _I]),
    "sqc_blob_ndim": (_I, [_P]), "sqc_blob_shape": (None, [_P, ctypes.POINTER(_I)]),
    "sqc_blob_data": (_F, [_P]), "sqc_blob_diff": (_F, [_P]), "sqc_blob_reshape": (_I, [_P, ctypes.POINTER(_I), _I]),
    "sqc_solver_open": (_P, [_S]), "sqc_solver_free": (None, [_P]), "sqc_solver_iter": (_I, [_P]),
    "sqc_solver_step": (_I, [_P, _I]), "sqc_solver_snapshot": (_I, [_P]), "sqc_solver_restore": (_I, [_P, _S]),
    "sqc_solver_net": (_P, [_P]), "sqc_solver_test_net_count": (_I, [_P]), "sqc_solver_test_net": (_P, [_P, _I]),
}


def wheel_library_dirs() -> list[Path]:
    """The lib/ folders of NVIDIA's wheels (nvidia-cuda-runtime, -cublas, -curand, -cudnn-cu13) on sys.path."""
    dirs = []
    for entry in sys.path:
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            dirs.extend(sorted(p for p in base.glob("*/lib") if p.is_dir()))
    return dirs


def preload_cuda_runtime() -> list[str]:
    """Load each CUDA runtime library found in NVIDIA's wheels, globally; returns the sonames not found there."""
    dirs = wheel_library_dirs()
    missing = []
    for soname in CUDA_RUNTIME_SONAMES:
        found = next((d / soname for d in dirs if (d / soname).is_file()), None)
        if found is None:
            missing.append(soname)
            continue
        ctypes.CDLL(str(found), mode=ctypes.RTLD_GLOBAL)
    return missing


class CaffeLibrary:
    """The loaded C interface, usable where pycaffe's `caffe` module is (`import_caffe` returns either)."""

    TRAIN = 0
    TEST = 1

    def __init__(self, path: Path, preload_cuda: bool = False) -> None:
        """`preload_cuda`: load the CUDA runtime libraries from NVIDIA's wheels first (a bundle carries none)."""
        missing: list[str] = []
        try:
            if preload_cuda:
                missing = preload_cuda_runtime()
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            hint = (f"; not found beside PyTorch's CUDA wheels: {', '.join(missing)} (pip install nvidia-cuda-runtime "
                    "nvidia-cublas nvidia-curand nvidia-cudnn-cu13, or a CUDA build of torch)") if missing else ""
            raise ImportError(f"{path}: cannot be loaded ({first_line(exc)}){hint}") from None
        try:
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.restype = restype
                fn.argtypes = argtypes
        except AttributeError as exc:
            raise ImportError(f"{path}: not this squeezecaffe's C interface ({first_line(exc)}); rebuild it with: "
                              "squeezecaffe build-caffe --force") from None
        version = lib.sqc_api_version()
        if version != API_VERSION:
            raise ImportError(f"{path}: C interface version {version}, this squeezecaffe needs {API_VERSION}; "
                              "rebuild it with: squeezecaffe build-caffe --force")
        self.lib = lib
        self.__file__ = str(path)
        self.__version__ = "1.0.0 (squeezecaffe C interface)"

    def error(self, what: str) -> RuntimeError:
        return RuntimeError(f"{what}: {self.lib.sqc_last_error().decode(errors='replace')}")

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise self.error(what)

    # ------------------------------------------------------------------ process-wide state
    def set_mode_cpu(self) -> None:
        self.lib.sqc_set_mode_cpu()

    def set_mode_gpu(self) -> None:
        self.lib.sqc_set_mode_gpu()

    def set_device(self, device: int) -> None:
        self.check(self.lib.sqc_set_device(int(device)), f"set_device({device})")

    def set_random_seed(self, seed: int) -> None:
        self.lib.sqc_set_random_seed(int(seed) & 0xFFFFFFFF)

    def cuda_built(self) -> bool:
        return bool(self.lib.sqc_cuda_built())

    def cuda_device_count(self) -> int:
        """CUDA devices visible to Caffe; RuntimeError with the runtime's reason where it cannot tell."""
        count = self.lib.sqc_cuda_device_count()
        if count < 0:
            raise self.error("cudaGetDeviceCount")
        return count

    # ------------------------------------------------------------------ objects
    def Net(self, prototxt: str, *args, weights: str | None = None) -> Net:
        """Net(prototxt, phase[, weights=...]) or pycaffe's older Net(prototxt, weights, phase)."""
        if len(args) == 2:
            weights, phase = args
        elif len(args) == 1:
            phase = args[0]
        else:
            raise TypeError("Net(prototxt, phase) or Net(prototxt, weights, phase)")
        handle = self.lib.sqc_net_open(str(prototxt).encode(), int(phase),
                                       None if weights is None else str(weights).encode())
        if not handle:
            raise self.error(f"Net({prototxt})")
        return Net(self, handle)

    def get_solver(self, solver_prototxt: str) -> Solver:
        handle = self.lib.sqc_solver_open(str(solver_prototxt).encode())
        if not handle:
            raise self.error(f"get_solver({solver_prototxt})")
        return Solver(self, handle)


class _Handle:
    """One C handle (a net or a solver) and its release: the single owner the Python objects share."""

    def __init__(self, free, handle: int, keep: object = None) -> None:
        self.free, self.value, self.keep = free, handle, keep  # keep: a solver net's solver handle

    def __del__(self) -> None:
        value, self.value = getattr(self, "value", None), None
        if value:
            self.free(value)


class Blob:
    """A net's blob: `.data`/`.diff` are numpy views of Caffe's host memory (synchronised from the GPU on access)."""

    def __init__(self, caffe: CaffeLibrary, handle: int, owner: _Handle) -> None:
        self._caffe = caffe
        self._handle = handle
        self._owner = owner  # the net's handle: kept alive while the Blob (or a view of it) lives

    @property
    def shape(self) -> tuple[int, ...]:
        ndim = self._caffe.lib.sqc_blob_ndim(self._handle)
        dims = (ctypes.c_int * max(ndim, 1))()
        self._caffe.lib.sqc_blob_shape(self._handle, dims)
        return tuple(dims[i] for i in range(ndim))

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _view(self, pointer) -> np.ndarray:
        shape, count = self.shape, self.count
        if count == 0:
            return np.zeros(shape, np.float32)
        buffer = (ctypes.c_float * count).from_address(ctypes.addressof(pointer.contents))
        buffer._owner = self  # type: ignore[attr-defined]  # the view keeps the net alive
        return np.ctypeslib.as_array(buffer).reshape(shape)

    @property
    def data(self) -> np.ndarray:
        return self._view(self._caffe.lib.sqc_blob_data(self._handle))

    @property
    def diff(self) -> np.ndarray:
        return self._view(self._caffe.lib.sqc_blob_diff(self._handle))

    def reshape(self, *shape: int) -> None:
        dims = (ctypes.c_int * len(shape))(*(int(d) for d in shape))
        self._caffe.check(self._caffe.lib.sqc_blob_reshape(self._handle, dims, len(shape)), f"reshape{shape}")


class Net:
    """pycaffe's Net, as much of it as squeezecaffe uses."""

    def __init__(self, caffe: CaffeLibrary, handle: int, keep: _Handle | None = None) -> None:
        self._caffe = caffe
        self._owned = _Handle(caffe.lib.sqc_net_free, handle, keep)  # a solver's net keeps the solver's handle
        self._handle = handle
        lib = caffe.lib
        names = [lib.sqc_net_blob_name(handle, i).decode() for i in range(lib.sqc_net_blob_count(handle))]
        self.blobs = OrderedDict((name, Blob(caffe, lib.sqc_net_blob(handle, i), self._owned))
                                 for i, name in enumerate(names))
        self.inputs = [names[lib.sqc_net_input_index(handle, i)] for i in range(lib.sqc_net_input_count(handle))]
        self.outputs = [names[lib.sqc_net_output_index(handle, i)] for i in range(lib.sqc_net_output_count(handle))]
        self.params: OrderedDict[str, list[Blob]] = OrderedDict()
        for i in range(lib.sqc_net_layer_count(handle)):
            count = lib.sqc_net_layer_param_count(handle, i)
            if count:
                self.params[lib.sqc_net_layer_name(handle, i).decode()] = [
                    Blob(caffe, lib.sqc_net_layer_param(handle, i, j), self._owned) for j in range(count)]

    def forward(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Copies the given input arrays in, runs the whole net, returns the output blobs (as pycaffe does)."""
        for name, value in inputs.items():
            self.blobs[name].data[...] = value
        loss = ctypes.c_float(0.0)
        self._caffe.check(self._caffe.lib.sqc_net_forward(self._handle, ctypes.byref(loss)), "forward")
        return {name: self.blobs[name].data for name in self.outputs}

    def backward(self) -> None:
        self._caffe.check(self._caffe.lib.sqc_net_backward(self._handle), "backward")

    def reshape(self) -> None:
        self._caffe.check(self._caffe.lib.sqc_net_reshape(self._handle), "reshape")

    def clear_param_diffs(self) -> None:
        self._caffe.check(self._caffe.lib.sqc_net_clear_param_diffs(self._handle), "clear_param_diffs")

    def copy_from(self, weights: str) -> None:
        self._caffe.check(self._caffe.lib.sqc_net_copy_from(self._handle, str(weights).encode()),
                          f"copy_from({weights})")

    def share_with(self, other: Net) -> None:
        self._caffe.check(self._caffe.lib.sqc_net_share_with(self._handle, other._handle), "share_with")

    def save(self, path: str) -> None:
        self._caffe.check(self._caffe.lib.sqc_net_save(self._handle, str(path).encode()), f"save({path})")


class Solver:
    """pycaffe's Solver, as much of it as squeezecaffe uses."""

    def __init__(self, caffe: CaffeLibrary, handle: int) -> None:
        self._caffe = caffe
        self._owned = _Handle(caffe.lib.sqc_solver_free, handle)
        self._handle = handle
        lib = caffe.lib
        self.net = Net(caffe, lib.sqc_solver_net(handle), keep=self._owned)
        self.test_nets = [Net(caffe, lib.sqc_solver_test_net(handle, i), keep=self._owned)
                          for i in range(lib.sqc_solver_test_net_count(handle))]

    @property
    def iter(self) -> int:
        return int(self._caffe.lib.sqc_solver_iter(self._handle))

    def step(self, iterations: int) -> None:
        self._caffe.check(self._caffe.lib.sqc_solver_step(self._handle, int(iterations)), "step")

    def snapshot(self) -> None:
        self._caffe.check(self._caffe.lib.sqc_solver_snapshot(self._handle), "snapshot")

    def restore(self, state: str) -> None:
        self._caffe.check(self._caffe.lib.sqc_solver_restore(self._handle, str(state).encode()), f"restore({state})")
