"""Caffe's own rules, framework-free: which layers a phase keeps, blob shapes, a net's wiring checks and
the numpy reading of a .caffemodel, how encoded records are decoded. Engines, export, compress and evaluation
import them without torch."""
