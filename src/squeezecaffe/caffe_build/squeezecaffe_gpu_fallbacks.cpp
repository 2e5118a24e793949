// Compiled into CUDA builds only (CMakeLists.txt). Six layers of the fork declare Forward_gpu/Backward_gpu but
// ship no .cu file defining them: CPU builds stub them out (STUB_GPU under CPU_ONLY), a CUDA build fails to link.
// Here they run their CPU code in GPU mode, which is what Caffe's Layer does for a layer without GPU code: the
// blobs' cpu_data()/mutable_cpu_data() bring the data to the host and back. Correct, not fast; none of these layers
// is in the SqueezeNet family's nets.
#ifndef CPU_ONLY
#include <vector>

#include "caffe/layers/hardsigmoid_layer.hpp"
#include "caffe/layers/hardswish_layer.hpp"
#include "caffe/layers/maxunpool_layer.hpp"
#include "caffe/layers/pixelshuffle_layer.hpp"
#include "caffe/layers/relu6_layer.hpp"
#include "caffe/layers/upsample_layer.hpp"

namespace caffe {

#define SQUEEZECAFFE_GPU_BY_CPU(classname)                                                       \
  template <typename Dtype>                                                                     \
  void classname<Dtype>::Forward_gpu(const std::vector<Blob<Dtype>*>& bottom,                   \
                                     const std::vector<Blob<Dtype>*>& top) {                    \
    this->Forward_cpu(bottom, top);                                                             \
  }                                                                                             \
  template <typename Dtype>                                                                     \
  void classname<Dtype>::Backward_gpu(const std::vector<Blob<Dtype>*>& top,                     \
                                      const std::vector<bool>& propagate_down,                  \
                                      const std::vector<Blob<Dtype>*>& bottom) {                \
    this->Backward_cpu(top, propagate_down, bottom);                                            \
  }                                                                                             \
  INSTANTIATE_LAYER_GPU_FUNCS(classname);

SQUEEZECAFFE_GPU_BY_CPU(HardSigmoidLayer)
SQUEEZECAFFE_GPU_BY_CPU(HardSwishLayer)
SQUEEZECAFFE_GPU_BY_CPU(MaxUnPoolLayer)
SQUEEZECAFFE_GPU_BY_CPU(PixelShuffleLayer)
SQUEEZECAFFE_GPU_BY_CPU(ReLU6Layer)
SQUEEZECAFFE_GPU_BY_CPU(UpsampleLayer)

}  // namespace caffe
#endif  // CPU_ONLY
