"""What `make caffe` builds: a pinned Caffe source distribution, the Debian packages it needs, and our fixes.

Two recipes share the sources, fixes and build files: the CPU build (the default, what `make test` uses) and the
CUDA build (`build-caffe --cuda`), which adds a CUDA 13 toolkit assembled from NVIDIA's PyPI wheels, cuDNN 9 and
the GPU architectures. Everything that changes a result feeds `recipe_hash(cuda)`, so a changed recipe builds into
a new cache directory instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from importlib import resources

# A source distribution of an SSD-era Caffe fork on PyPI. Its own setup.py needs conda and Python <= 3.9, so
# only its sources are used; the build files are ours (CMakeLists.txt in this package).
SDIST_REQUIREMENT = "brocolli-caffe==9.0.2"
SDIST_FILE = "brocolli-caffe-9.0.2.tar.gz"
SDIST_SHA256 = "c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"

# Debian 12 / Ubuntu 22.04+ names. boost-python's package provides the library for the system Python's version;
# CMake looks for the one matching the venv's Python (3.11 on Debian 12).
APT_PACKAGES = (
    "build-essential", "cmake", "pkg-config",
    "libboost-system-dev", "libboost-thread-dev", "libboost-filesystem-dev", "libboost-regex-dev",
    "libboost-python-dev", "libprotobuf-dev", "protobuf-compiler", "libgoogle-glog-dev", "libgflags-dev",
    "libhdf5-dev", "liblmdb-dev", "libleveldb-dev", "libsnappy-dev", "libopencv-dev", "libopenblas-dev",
)

# (requirement, module) of the Python packages pycaffe's own modules import at `import caffe` (caffe.io needs
# scikit-image and scipy).
PYTHON_PACKAGES = (("scikit-image>=0.21,<1", "skimage"), ("scipy>=1.10,<2", "scipy"), ("six>=1.16,<2", "six"))


@dataclass(frozen=True)
class SourceFix:
    path: str  # relative to the source root
    old: str  # exact text that must be present (the build stops if the sources differ from what we know)
    new: str
    why: str


SOURCE_FIXES = (
    SourceFix("src/caffe/net.cpp", '#include "caffe/test/test_caffe_main.hpp"\n', "",
              "net.cpp includes the gtest test main header but uses nothing from it; gtest is not built"),
    # The two below change only CUDA builds (the code sits under #ifndef CPU_ONLY).
    SourceFix("src/caffe/internal_thread.cpp",
              "  int device = 0;\n#ifndef CPU_ONLY\n  CUDA_CHECK(cudaGetDevice(&device));\n#endif\n",
              "  int device = 0;\n#ifndef CPU_ONLY\n  if (Caffe::mode() == Caffe::GPU) {\n"
              "    CUDA_CHECK(cudaGetDevice(&device));\n  }\n#endif\n",
              "a CUDA build asks the driver for the current device whenever a data layer starts its prefetch thread, "
              "which is fatal on a machine without a GPU even in CPU mode: ask only in GPU mode"),
    SourceFix("src/caffe/internal_thread.cpp",
              "#ifndef CPU_ONLY\n  CUDA_CHECK(cudaSetDevice(device));\n#endif\n",
              "#ifndef CPU_ONLY\n  if (mode == Caffe::GPU) {\n    CUDA_CHECK(cudaSetDevice(device));\n  }\n#endif\n",
              "the prefetch thread's cudaSetDevice, for the same reason"),
    SourceFix("src/caffe/common.cpp",
              '  LOG(INFO) << "Clock rate:                    " << prop.clockRate;\n',
              "",
              "CUDA 13 removed cudaDeviceProp.clockRate (DeviceQuery only prints it)"),
    SourceFix("src/caffe/common.cpp",
              '  LOG(INFO) << "Concurrent copy and execution: "\n      << (prop.deviceOverlap ? "Yes" : "No");\n',
              '  LOG(INFO) << "Concurrent copy and execution: "\n      << (prop.asyncEngineCount > 0 ? "Yes" : "No");\n',
              "CUDA 13 removed cudaDeviceProp.deviceOverlap; asyncEngineCount says the same"),
    SourceFix("src/caffe/common.cpp",
              '  LOG(INFO) << "Kernel execution timeout:      "\n'
              '      << (prop.kernelExecTimeoutEnabled ? "Yes" : "No");\n',
              "",
              "CUDA 13 removed cudaDeviceProp.kernelExecTimeoutEnabled (DeviceQuery only prints it)"),
    SourceFix("src/caffe/layers/proposal_layer.cu",
              "\n\nINSTANTIATE_LAYER_GPU_FUNCS(ProposalLayer);\n",
              "\n\ntemplate <typename Dtype>\nvoid ProposalLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,\n"
              "    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {}\n\n"
              "INSTANTIATE_LAYER_GPU_FUNCS(ProposalLayer);\n",
              "the fork declares ProposalLayer::Backward_gpu but never defines it (the CPU build stubs it); like its "
              "Backward_cpu, proposals pass no gradient"),
    # A cuDNN build makes every DEFAULT-engine Convolution, Pooling, LRN, ReLU, Sigmoid, Softmax and TanH a cuDNN
    # layer, whose setup needs a GPU even in CPU mode. In CPU mode they are now Caffe's own layers (what the cuDNN
    # layers compute there anyway, through their Caffe parent class); GPU mode keeps cuDNN.
    SourceFix("src/caffe/layer_factory.cpp",
              "    if (!use_dilation) {\n      engine = ConvolutionParameter_Engine_CUDNN;\n",
              "    if (!use_dilation && Caffe::mode() == Caffe::GPU) {\n      engine = ConvolutionParameter_Engine_CUDNN;\n",
              "cuDNN convolution only in GPU mode"),
    *(SourceFix("src/caffe/layer_factory.cpp",
                f"#ifdef USE_CUDNN\n    engine = {kind}Parameter_Engine_CUDNN;\n",
                f"#ifdef USE_CUDNN\n    if (Caffe::mode() == Caffe::GPU) engine = {kind}Parameter_Engine_CUDNN;\n",
                f"cuDNN {kind} only in GPU mode")
      for kind in ("Pooling", "LRN", "ReLU", "Sigmoid", "Softmax", "TanH")),
    # cuDNN 8 removed the algorithm queries the fork's cuDNN convolution uses; the *_v7 queries replace them
    # (squeezecaffe_cudnn_algos.hpp). Only built with USE_CUDNN.
    SourceFix("src/caffe/layers/cudnn_conv_layer.cpp",
              '#include "caffe/layers/cudnn_conv_layer.hpp"\n',
              '#include "caffe/layers/cudnn_conv_layer.hpp"\n#include "caffe/util/squeezecaffe_cudnn_algos.hpp"\n',
              "the cuDNN algorithm helpers"),
    SourceFix("src/caffe/layers/cudnn_conv_layer.cpp",
              "    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm(handle_[0],\n      bottom_descs_[i],\n"
              "      filter_desc_,\n      conv_descs_[i],\n      top_descs_[i],\n"
              "      CUDNN_CONVOLUTION_FWD_SPECIFY_WORKSPACE_LIMIT,\n      workspace_limit_bytes,\n"
              "      &fwd_algo_[i]));\n",
              "    fwd_algo_[i] = squeezecaffe::forward_algo(handle_[0], bottom_descs_[i], filter_desc_,\n"
              "      conv_descs_[i], top_descs_[i], workspace_limit_bytes);\n",
              "cudnnGetConvolutionForwardAlgorithm was removed in cuDNN 8"),
    SourceFix("src/caffe/layers/cudnn_conv_layer.cpp",
              "    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm(handle_[0],\n"
              "          bottom_descs_[i], top_descs_[i], conv_descs_[i], filter_desc_,\n"
              "          CUDNN_CONVOLUTION_BWD_FILTER_SPECIFY_WORKSPACE_LIMIT,\n"
              "          workspace_limit_bytes, &bwd_filter_algo_[i]) );\n",
              "    bwd_filter_algo_[i] = squeezecaffe::backward_filter_algo(handle_[0], bottom_descs_[i],\n"
              "      top_descs_[i], conv_descs_[i], filter_desc_, workspace_limit_bytes);\n",
              "cudnnGetConvolutionBackwardFilterAlgorithm was removed in cuDNN 8"),
    SourceFix("src/caffe/layers/cudnn_conv_layer.cpp",
              "    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm(handle_[0],\n"
              "          filter_desc_, top_descs_[i], conv_descs_[i], bottom_descs_[i],\n"
              "          CUDNN_CONVOLUTION_BWD_DATA_SPECIFY_WORKSPACE_LIMIT,\n"
              "        workspace_limit_bytes, &bwd_data_algo_[i]));\n",
              "    bwd_data_algo_[i] = squeezecaffe::backward_data_algo(handle_[0], filter_desc_,\n"
              "      top_descs_[i], conv_descs_[i], bottom_descs_[i], workspace_limit_bytes);\n",
              "cudnnGetConvolutionBackwardDataAlgorithm was removed in cuDNN 8"),
)

# Stale generated protobuf code in the sdist (another protoc version): removed so ours are the only ones seen.
REMOVED_FILES = ("src/caffe/proto/caffe.pb.cc", "include/caffe/proto/caffe.pb.h", "python/caffe/proto/caffe_pb2.py")

# Our build files: (file in this package, where it goes in the source tree).
BUILD_FILES = (
    ("CMakeLists.txt", "CMakeLists.txt"),
    ("squeezecaffe_opencv3_compat.h", "squeezecaffe_opencv3_compat.h"),
    ("squeezecaffe_capi.cpp", "squeezecaffe_capi.cpp"),
    ("squeezecaffe_gpu_fallbacks.cpp", "squeezecaffe_gpu_fallbacks.cpp"),
    ("squeezecaffe_cudnn_algos.hpp", "include/caffe/util/squeezecaffe_cudnn_algos.hpp"),
)

# ---- the CUDA recipe
# The toolkit: NVIDIA's CUDA 13.0 wheels from PyPI, unpacked together (nvidia/cu13/{bin,include,lib,nvvm} and
# nvidia/cudnn/{include,lib}). Why these and not Debian's nvidia-cuda-toolkit: they are the same CUDA 13 libraries
# that PyTorch's CUDA wheels install (so a GPU machine with PyTorch already has every runtime library our libcaffe
# needs), they install without root, and Debian 12 has only CUDA 11.8 (no cuDNN at all). 13.0 matches the
# drivers of the machines we target (580); newer toolkits emit code that needs newer drivers.
CUDA_WHEELS = (
    "nvidia-cuda-nvcc==13.0.88", "nvidia-nvvm==13.0.88", "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cccl==13.0.85", "nvidia-cublas==13.1.0.3",
    "nvidia-curand==10.4.0.35", "nvidia-cudnn-cu13==9.13.0.50",
)
# Machine code for every architecture CUDA 13 still targets from Turing to Hopper (it dropped Maxwell, Pascal and
# Volta), and PTX for the newest, which later GPUs compile when they load it.
CUDA_ARCHITECTURES = "75-real;80-real;86-real;89-real;90"
# The runtime libraries a CUDA libcaffe needs besides the non-CUDA ones (sonames): found next to PyTorch's CUDA
# wheels, or in the toolkit here.
CUDA_RUNTIME_SONAMES = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudnn.so.9")
# The CUDA build travels as a bundle of every library it loads, so two heavy dependencies go: OpenCV's image codecs
# pull in GDAL, FFmpeg and the desktop stacks (>200 MB of shared libraries on Debian 12), so Caffe's OpenCV paths
# are left out (raw, not --encoded, datums only); OpenBLAS (37 MB) gives way to Debian's reference BLAS (0.45 MB),
# which only CPU mode computes with (GPU mode uses cuBLAS).
CUDA_CMAKE_OPTIONS = ("-DSQUEEZECAFFE_CUDA=ON", "-DSQUEEZECAFFE_OPENCV=OFF", "-DSQUEEZECAFFE_REFERENCE_BLAS=ON")
# patchelf rewrites the bundle's RPATHs to $ORIGIN; libblas3 is the reference BLAS.
CUDA_APT_PACKAGES = ("patchelf", "libblas3")

# The tools squeezecaffe uses (all of tools/*.cpp are built).
TOOLS = ("caffe", "convert_imageset", "compute_image_mean")


def build_file_text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def apt_packages(cuda: bool = False) -> tuple[str, ...]:
    """The CPU recipe's packages; the CUDA recipe's leave OpenCV out (it builds without it) and add its own."""
    if not cuda:
        return APT_PACKAGES
    return tuple(p for p in APT_PACKAGES if p != "libopencv-dev") + CUDA_APT_PACKAGES


def recipe_hash(cuda: bool = False) -> str:
    """12 hex digits over everything that decides the build's output."""
    h = hashlib.sha256()
    h.update(f"python{sys.version_info[0]}.{sys.version_info[1]}\0".encode())  # _caffe is built for one Python
    cuda_parts = ("cuda", *CUDA_WHEELS, CUDA_ARCHITECTURES, *CUDA_CMAKE_OPTIONS) if cuda else ()
    for part in (SDIST_REQUIREMENT, SDIST_SHA256, *apt_packages(cuda), *(req for req, _ in PYTHON_PACKAGES),
                 *REMOVED_FILES, *cuda_parts):
        h.update(part.encode() + b"\0")
    for fix in SOURCE_FIXES:
        h.update(f"{fix.path}\0{fix.old}\0{fix.new}\0".encode())
    for name, dest in BUILD_FILES:
        h.update(f"{dest}\0".encode() + build_file_text(name).encode() + b"\0")
    return h.hexdigest()[:12]
