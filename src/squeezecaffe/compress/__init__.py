"""Deep Compression of trained caffemodels: magnitude pruning, trained quantization (weight sharing) and Huffman
coding into a `.sqz` container, with retraining through the normal training run (Han et al., ICLR 2016).

Modules by job: `plan` (density and bit-width specs), `prune` and `kmeans` (the arithmetic), `stages` (prune and
quantize as data), `retrain` (a stage's retraining run), `pipeline` (the `compress` verb's loop and report), the
`.sqz` format: `huffman`, `sparse` (relative positions with filler entries), `container` (the file), `codec` (a
caffemodel <-> a container), `sqz` (open and decompress); `table` (the per-layer size table) and `options`.
"""
