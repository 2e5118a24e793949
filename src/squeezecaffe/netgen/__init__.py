"""What a net is: the layer DSL, Fire/bypass/ResNet modules, the model registry and its variants, the builder that
turns a row into train_val/deploy prototxt, and the summaries and drawings of a net."""
