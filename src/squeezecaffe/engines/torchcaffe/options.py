"""Where and how a net runs: the user's device options (engines/device.py) plus the engine's own: data workers,
prefetch depth, master precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from squeezecaffe.engines.device import DeviceOptions
from squeezecaffe.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineOptions(DeviceOptions):
    workers: int = 0  # DataLoader worker processes per Data layer
    prefetch: int = 4
    dtype: str = "float32"  # master precision of weights, histories and updates ("float64" for reference checks)

    def data_transform_device(self) -> str | None:
        return str(self.torch_device()) if self.gpu_transform or self.data_in_memory else None

    def torch_device(self) -> torch.device:
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise UserError(f"--device {self.device}: not a device (use cpu, cuda or cuda:N)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: CUDA is not available here (torch {torch.__version__}, "
                            f"built for CUDA {torch.version.cuda or 'none'})")
        return device

    def autocast_dtype(self) -> torch.dtype | None:
        if self.amp is None:
            return None
        if self.amp not in AMP_DTYPES:
            raise UserError(f"--amp {self.amp}: unknown (choose {', '.join(AMP_DTYPES)})")
        return AMP_DTYPES[self.amp]

    def apply(self, net) -> None:
        """Move a CaffeNet to the device and set its memory format and autocast."""
        device = self.torch_device()
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"dtype {self.dtype}: use float32 or float64")
        net.to(device, getattr(torch, self.dtype))
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        net.channels_last = self.channels_last
        net.autocast_dtype = self.autocast_dtype()
