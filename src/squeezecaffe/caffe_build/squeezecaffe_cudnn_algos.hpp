// Copied into include/caffe/util/ by squeezecaffe's Caffe recipe; included by cudnn_conv_layer.cpp (a recipe fix).
// cuDNN 8 removed the algorithm queries Caffe's cuDNN convolution calls (cudnnGetConvolution*Algorithm with a
// workspace preference). Their replacements, the *_v7 queries, return every algorithm ranked by cuDNN's own
// estimate of speed; like the removed calls with SPECIFY_WORKSPACE_LIMIT, we take the fastest one that is supported
// for these descriptors and needs no more than the layer's workspace limit. Every direction has one algorithm that
// needs no workspace (implicit GEMM and algorithm 0), so a choice always exists.
#ifndef SQUEEZECAFFE_CUDNN_ALGOS_HPP_
#define SQUEEZECAFFE_CUDNN_ALGOS_HPP_
#ifdef USE_CUDNN
#include <cudnn.h>
#include <glog/logging.h>

namespace squeezecaffe {

template <typename Perf>
auto fastest_within(const Perf* ranked, int count, size_t workspace_limit, const char* direction)
    -> decltype(ranked[0].algo) {
  for (int k = 0; k < count; ++k) {
    if (ranked[k].status == CUDNN_STATUS_SUCCESS && ranked[k].memory <= workspace_limit) return ranked[k].algo;
  }
  LOG(FATAL) << "cuDNN offers no " << direction << " convolution algorithm within " << workspace_limit
             << " bytes of workspace";
  return ranked[0].algo;
}

inline void check_query(cudnnStatus_t status) {
  CHECK_EQ(status, CUDNN_STATUS_SUCCESS) << " " << cudnnGetErrorString(status);
}

inline cudnnConvolutionFwdAlgo_t forward_algo(cudnnHandle_t handle, cudnnTensorDescriptor_t x,
                                              cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t conv,
                                              cudnnTensorDescriptor_t y, size_t workspace_limit) {
  cudnnConvolutionFwdAlgoPerf_t ranked[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int count = 0;
  check_query(cudnnGetConvolutionForwardAlgorithm_v7(handle, x, w, conv, y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                     &count, ranked));
  return fastest_within(ranked, count, workspace_limit, "forward");
}

inline cudnnConvolutionBwdFilterAlgo_t backward_filter_algo(cudnnHandle_t handle, cudnnTensorDescriptor_t x,
                                                            cudnnTensorDescriptor_t dy,
                                                            cudnnConvolutionDescriptor_t conv,
                                                            cudnnFilterDescriptor_t dw, size_t workspace_limit) {
  cudnnConvolutionBwdFilterAlgoPerf_t ranked[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  int count = 0;
  check_query(cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, x, dy, conv, dw,
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, ranked));
  return fastest_within(ranked, count, workspace_limit, "backward-filter");
}

inline cudnnConvolutionBwdDataAlgo_t backward_data_algo(cudnnHandle_t handle, cudnnFilterDescriptor_t w,
                                                        cudnnTensorDescriptor_t dy, cudnnConvolutionDescriptor_t conv,
                                                        cudnnTensorDescriptor_t dx, size_t workspace_limit) {
  cudnnConvolutionBwdDataAlgoPerf_t ranked[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  int count = 0;
  check_query(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, w, dy, conv, dx,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, ranked));
  return fastest_within(ranked, count, workspace_limit, "backward-data");
}

}  // namespace squeezecaffe

#endif  // USE_CUDNN
#endif  // SQUEEZECAFFE_CUDNN_ALGOS_HPP_
