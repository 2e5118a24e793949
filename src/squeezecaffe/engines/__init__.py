"""The training engines: real Caffe (pycaffe) and our PyTorch engine with Caffe's semantics, behind one training
contract (contract.py) and the device options both accept (device.py)."""
