"""Images and stored records -> the float CHW arrays a deploy net takes, exactly as in training.

A file is decoded as build-lmdb decodes it (OpenCV, BGR, 1 or 3 channels by the net's input) and
resized to the size the training images were stored at; then Caffe's TEST transform applies
(mean, scale, centre crop). A record from an LMDB is already at its stored size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from squeezecaffe.data_tools.decode import read_image
from squeezecaffe.data_tools.transform import DataTransformer
from squeezecaffe.errors import UnreadableImage, UserError
from squeezecaffe.evaluation.artifacts import Artifacts
from squeezecaffe.proto import pb


class Preprocessor:
    def __init__(self, art: Artifacts) -> None:
        self.channels, self.height, self.width = art.input_shape
        self.transform = DataTransformer(art.transform, pb.TEST, where=f"{art.deploy_path} preprocessing")
        crop = int(art.transform.crop_size)
        # Files are brought to the stored training size; without one, straight to what the net takes.
        self.file_size = art.stored_size or ((crop, crop) if crop else (self.height, self.width))
        self.where = str(art.deploy_path)

    def display_image(self, path: str | Path) -> np.ndarray:
        """The uint8 CHW image a file becomes before the transform (what an error grid shows)."""
        img, _, reason = read_image(Path(path), self.channels == 1, self.file_size)
        if img is None:
            raise UnreadableImage(f"{path}: {reason}")
        return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)

    def from_stored(self, chw: np.ndarray, where: str = "record") -> np.ndarray:
        """A uint8 CHW image at its stored size -> the float32 CHW the net takes."""
        if chw.shape[0] != self.channels:
            raise UserError(f"{where}: image has {chw.shape[0]} channels, the net {self.where} takes {self.channels}")
        out = self.transform(chw, None)
        if out.shape != (self.channels, self.height, self.width):
            raise UserError(f"{where}: preprocessed image is {'x'.join(map(str, out.shape))}, the net {self.where} "
                            f"takes {self.channels}x{self.height}x{self.width}")
        return out

    def from_file(self, path: str | Path) -> np.ndarray:
        return self.from_stored(self.display_image(path), str(path))
