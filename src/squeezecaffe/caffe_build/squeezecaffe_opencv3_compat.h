// Forced into every translation unit of our Caffe build (see CMakeLists.txt).
// The brocolli-caffe sources use OpenCV 3 C-API names (CV_LOAD_IMAGE_COLOR, CV_CAP_PROP_*, CV_FOURCC, CV_FILLED,
// CV_BGR2HSV, ...). OpenCV 4 (Debian 12 ships 4.6) still has most of them, but only in "legacy" C headers that
// nothing includes any more; including those here brings them back with their original values.
#pragma once
#ifdef __cplusplus
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgcodecs/legacy/constants_c.h>
#include <opencv2/imgproc.hpp>
#include <opencv2/imgproc/types_c.h>
#include <opencv2/videoio.hpp>
#include <opencv2/videoio/legacy/constants_c.h>
#ifndef CV_FILLED
#define CV_FILLED -1  // the value of cv::FILLED; its C macro lives in imgproc_c.h, a C-only header
#endif
#endif
