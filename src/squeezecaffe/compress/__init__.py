"""Deep Compression of trained caffemodels: magnitude pruning, trained quantization (weight sharing) and Huffman
coding into a `.sqz` container, with retraining through the normal training run (Han et al., ICLR 2016).

Modules: `plan` (density and bit-width specs), `prune`, `kmeans`, `huffman`, `sparse` (relative positions with
filler entries), `container` (the .sqz file), `codec` (a caffemodel <-> a container), `table` (the per-layer size
table) and `pipeline` (the `compress` verb's stages).
"""
