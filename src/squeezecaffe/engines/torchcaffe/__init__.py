"""Our PyTorch engine: a Caffe prototxt interpreted layer by layer with Caffe's exact semantics (fillers, solver
rules, BatchNorm sums, Data layer transform), on the CPU or CUDA."""
