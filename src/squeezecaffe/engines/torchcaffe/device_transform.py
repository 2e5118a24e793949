"""Caffe's DataTransformer applied to a whole uint8 batch on the training device (`--gpu-transform`).

The loader's workers still decode records and make the per-record draws (crop offsets, mirror coin) with the
same seeded generator as the CPU path (`DataTransformer.draw`), but they ship the raw uint8 pixels: a quarter
of the bytes of float32 to move to the GPU, and the crop, mean subtraction, scaling and mirror run there as a
few batched tensor ops. The arithmetic is the CPU path's, element for element ((pixel - mean) * scale in
float32, the mean taken at the same crop window, mirrored after), so both paths give identical batches.
"""

from __future__ import annotations

import numpy as np
import torch

from squeezecaffe.data_tools.transform import DataTransformer


class DeviceTransform:
    def __init__(self, transformer: DataTransformer, device: torch.device | str) -> None:
        self.t = transformer
        self.device = torch.device(device)
        self.mean_image = (torch.from_numpy(transformer.mean_image).to(self.device)
                           if transformer.mean_image is not None else None)
        self.mean_values = (torch.from_numpy(np.asarray(transformer.mean_values, np.float32)).to(self.device)
                            if transformer.mean_values is not None else None)
        self.scale = float(transformer.scale)

    def __call__(self, pixels: torch.Tensor, offsets: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
        """pixels: N x C x H x W uint8; offsets: N x 2 (row, column); mirror: N bools -> N x C x h x w float32."""
        n, c, h, w = pixels.shape
        self.t.check_mean(c, h, w)
        oh, ow = (self.t.crop, self.t.crop) if self.t.crop else (h, w)
        pixels = pixels.to(self.device, non_blocking=True)
        offsets = offsets.to(self.device, non_blocking=True)
        mirror = mirror.to(self.device, non_blocking=True)
        rows = offsets[:, 0:1] + torch.arange(oh, device=self.device)  # N x oh
        columns = torch.arange(ow, device=self.device).expand(n, ow)
        columns = torch.where(mirror[:, None], ow - 1 - columns, columns) + offsets[:, 1:2]  # mirrored windows
        batch = torch.arange(n, device=self.device)[:, None, None]
        # N x oh x ow x C, gathered in one indexing op, then back to N x C x oh x ow
        out = pixels.permute(0, 2, 3, 1)[batch, rows[:, :, None], columns[:, None, :]].float()
        if self.mean_image is not None:
            out = out - self.mean_image.permute(1, 2, 0)[rows[:, :, None], columns[:, None, :]]
        elif self.mean_values is not None:
            out = out - self.mean_values
        if self.scale != 1:
            out = out * self.scale
        return out.permute(0, 3, 1, 2).contiguous()
