// squeezecaffe's C interface to Caffe: a plain C ABI over Caffe's Net, Blob and Solver, loaded from Python with
// ctypes (squeezecaffe.engines.pycaffe.capi).
//
// Why it exists beside pycaffe's Boost.Python module: an extension module is tied to one CPython minor version
// (and Boost.Python to the libboost_python built for it), so a Caffe build carried to another machine - the GPU
// machine's Python is not ours - cannot `import caffe`. A C ABI has no such tie: the same library works from any
// Python with numpy. Every call returns 0 or a handle on success; on failure -1 or NULL, with the reason in
// sqc_last_error(). Caffe's own CHECK failures still end the process, exactly as they do under pycaffe.
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "caffe/caffe.hpp"
#include "caffe/solver_factory.hpp"
#include "caffe/util/io.hpp"
#include "caffe/util/upgrade_proto.hpp"

using caffe::Blob;
using caffe::Caffe;
using caffe::Net;
using caffe::Solver;

namespace {

thread_local std::string last_error;

// A net handle shares ownership of the net: one made by sqc_net_open owns it alone; one handed out by a solver
// keeps the solver's net alive for as long as Python holds it.
// (Caffe's own shared_ptr is Boost's: caffe::shared_ptr.)
struct NetHandle {
  caffe::shared_ptr<Net<float> > net;
};

struct SolverHandle {
  caffe::shared_ptr<Solver<float> > solver;
};

bool readable(const char* path) {
  std::ifstream file(path);
  return file.good();
}

template <typename F>
int guarded(F body) {
  try {
    body();
    return 0;
  } catch (const std::exception& exc) {
    last_error = exc.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

Net<float>* net_of(void* handle) { return static_cast<NetHandle*>(handle)->net.get(); }
Solver<float>* solver_of(void* handle) { return static_cast<SolverHandle*>(handle)->solver.get(); }

}  // namespace

extern "C" {

// Bumped whenever a function's meaning or signature changes; the Python side refuses another version.
int sqc_api_version() { return 1; }

const char* sqc_last_error() { return last_error.c_str(); }

int sqc_cuda_built() {
#ifdef CPU_ONLY
  return 0;
#else
  return 1;
#endif
}

// The number of CUDA devices this process sees; -1 with the CUDA runtime's reason when it cannot tell (no driver).
int sqc_cuda_device_count() {
#ifdef CPU_ONLY
  last_error = "this Caffe build is CPU-only";
  return -1;
#else
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    last_error = cudaGetErrorString(status);
    return -1;
  }
  return count;
#endif
}

void sqc_set_mode_cpu() { Caffe::set_mode(Caffe::CPU); }
void sqc_set_mode_gpu() { Caffe::set_mode(Caffe::GPU); }
int sqc_set_device(int device) {
  return guarded([&] { Caffe::SetDevice(device); });
}
void sqc_set_random_seed(unsigned int seed) { Caffe::set_random_seed(seed); }

// ---------------------------------------------------------------------------------------------------- nets
void* sqc_net_open(const char* prototxt, int phase, const char* weights) {
  if (!readable(prototxt)) {
    last_error = std::string(prototxt) + ": cannot be read";
    return nullptr;
  }
  if (weights != nullptr && !readable(weights)) {
    last_error = std::string(weights) + ": cannot be read";
    return nullptr;
  }
  NetHandle* handle = nullptr;
  int status = guarded([&] {
    std::unique_ptr<NetHandle> made(new NetHandle);
    made->net.reset(new Net<float>(prototxt, static_cast<caffe::Phase>(phase)));
    if (weights != nullptr) made->net->CopyTrainedLayersFrom(std::string(weights));
    handle = made.release();
  });
  return status == 0 ? handle : nullptr;
}

void sqc_net_free(void* net) { delete static_cast<NetHandle*>(net); }

int sqc_net_forward(void* net, float* loss) {
  return guarded([&] { net_of(net)->Forward(loss); });
}
int sqc_net_backward(void* net) {
  return guarded([&] { net_of(net)->Backward(); });
}
int sqc_net_reshape(void* net) {
  return guarded([&] { net_of(net)->Reshape(); });
}
int sqc_net_clear_param_diffs(void* net) {
  return guarded([&] { net_of(net)->ClearParamDiffs(); });
}
int sqc_net_copy_from(void* net, const char* weights) {
  if (!readable(weights)) {
    last_error = std::string(weights) + ": cannot be read";
    return -1;
  }
  return guarded([&] { net_of(net)->CopyTrainedLayersFrom(std::string(weights)); });
}
int sqc_net_share_with(void* net, void* other) {
  return guarded([&] { net_of(net)->ShareTrainedLayersWith(net_of(other)); });
}
// The learned parameters as a binary NetParameter (what pycaffe's Net.save writes).
int sqc_net_save(void* net, const char* path) {
  return guarded([&] {
    caffe::NetParameter param;
    net_of(net)->ToProto(&param, false);
    caffe::WriteProtoToBinaryFile(param, path);
  });
}

int sqc_net_blob_count(void* net) { return static_cast<int>(net_of(net)->blob_names().size()); }
const char* sqc_net_blob_name(void* net, int i) { return net_of(net)->blob_names()[i].c_str(); }
void* sqc_net_blob(void* net, int i) { return net_of(net)->blobs()[i].get(); }
int sqc_net_input_count(void* net) { return static_cast<int>(net_of(net)->input_blob_indices().size()); }
int sqc_net_input_index(void* net, int i) { return net_of(net)->input_blob_indices()[i]; }
int sqc_net_output_count(void* net) { return static_cast<int>(net_of(net)->output_blob_indices().size()); }
int sqc_net_output_index(void* net, int i) { return net_of(net)->output_blob_indices()[i]; }
int sqc_net_layer_count(void* net) { return static_cast<int>(net_of(net)->layer_names().size()); }
const char* sqc_net_layer_name(void* net, int i) { return net_of(net)->layer_names()[i].c_str(); }
int sqc_net_layer_param_count(void* net, int i) {
  return static_cast<int>(net_of(net)->layers()[i]->blobs().size());
}
void* sqc_net_layer_param(void* net, int i, int j) { return net_of(net)->layers()[i]->blobs()[j].get(); }

// ---------------------------------------------------------------------------------------------------- blobs
int sqc_blob_ndim(void* blob) { return static_cast<Blob<float>*>(blob)->num_axes(); }
void sqc_blob_shape(void* blob, int* shape) {
  const std::vector<int>& dims = static_cast<Blob<float>*>(blob)->shape();
  for (size_t i = 0; i < dims.size(); ++i) shape[i] = dims[i];
}
// Host pointers, synchronised from the device when the newest copy is there (pycaffe's .data/.diff do the same).
float* sqc_blob_data(void* blob) { return static_cast<Blob<float>*>(blob)->mutable_cpu_data(); }
float* sqc_blob_diff(void* blob) { return static_cast<Blob<float>*>(blob)->mutable_cpu_diff(); }
int sqc_blob_reshape(void* blob, const int* shape, int ndim) {
  return guarded([&] { static_cast<Blob<float>*>(blob)->Reshape(std::vector<int>(shape, shape + ndim)); });
}

// ---------------------------------------------------------------------------------------------------- solvers
void* sqc_solver_open(const char* solver_prototxt) {
  if (!readable(solver_prototxt)) {
    last_error = std::string(solver_prototxt) + ": cannot be read";
    return nullptr;
  }
  SolverHandle* handle = nullptr;
  int status = guarded([&] {
    caffe::SolverParameter param;
    caffe::ReadSolverParamsFromTextFileOrDie(solver_prototxt, &param);
    std::unique_ptr<SolverHandle> made(new SolverHandle);
    made->solver.reset(caffe::SolverRegistry<float>::CreateSolver(param));
    handle = made.release();
  });
  return status == 0 ? handle : nullptr;
}

void sqc_solver_free(void* solver) { delete static_cast<SolverHandle*>(solver); }
int sqc_solver_iter(void* solver) { return solver_of(solver)->iter(); }
int sqc_solver_step(void* solver, int iterations) {
  return guarded([&] { solver_of(solver)->Step(iterations); });
}
int sqc_solver_snapshot(void* solver) {
  return guarded([&] { solver_of(solver)->Snapshot(); });
}
int sqc_solver_restore(void* solver, const char* state) {
  if (!readable(state)) {
    last_error = std::string(state) + ": cannot be read";
    return -1;
  }
  return guarded([&] { solver_of(solver)->Restore(state); });
}
void* sqc_solver_net(void* solver) { return new NetHandle{solver_of(solver)->net()}; }
int sqc_solver_test_net_count(void* solver) { return static_cast<int>(solver_of(solver)->test_nets().size()); }
void* sqc_solver_test_net(void* solver, int i) { return new NetHandle{solver_of(solver)->test_nets()[i]}; }

}  // extern "C"
