"""squeezecaffe: generate, train, evaluate and compress SqueezeNet-family nets as Caffe artifacts."""

__version__ = "0.1.0"
