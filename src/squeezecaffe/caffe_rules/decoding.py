"""How a net decodes an encoded Datum: Caffe's transform_param `force_gray` / `force_color` decode every file to
1 or 3 channels (without either, each file keeps its own: an RGBA PNG gives 4, a gray JPEG 1). Nets generated for
an encoded database force the channels they were sized for; build-lmdb's mean and eval decode the same way."""

from __future__ import annotations


def forced_decoding(channels: int) -> str:
    """'gray' for a 1-channel net, else 'color': the transform_param flag is `force_<this>`, and data_tools'
    datum_to_array takes the same word."""
    return "gray" if channels == 1 else "color"
