"""The pycaffe engine: real Caffe (built by `make caffe`) behind the same training and evaluation interface as
the torch engine."""
