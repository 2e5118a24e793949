"""What a trained model does: `eval` and `classify` over files or databases, on the torch engine, OpenCV dnn or Caffe."""
