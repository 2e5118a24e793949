"""Deploying beyond Caffe: a trained model exported to ONNX (onnx_graph builds the graph, onnx_export runs the
`export` verb and proves the exported file computes what our engine computes)."""
