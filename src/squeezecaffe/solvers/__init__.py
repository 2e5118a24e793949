"""How a net is trained, as Caffe files: the schedule, recipes, settings resolved from a data directory, solver.prototxt
emission, LR policies, and the generation of a train-ready folder (train_val + deploy + solver)."""
