"""Where a net runs and in what form: the device options every torch-engine verb offers (train, solve, forward,
time), declared once. Free of torch, so a verb's parser can be built without importing an engine; the torch side
(EngineOptions) extends it."""

from __future__ import annotations

from dataclasses import dataclass, fields

from squeezecaffe.options import option


def device_field():
    """The --device option, for DeviceOptions and for the verbs that offer only it (compress)."""
    return option("cpu", "cpu, cuda or cuda:N")


@dataclass(frozen=True)
class DeviceOptions:
    device: str = device_field()
    channels_last: bool = option(False, "NHWC memory format (faster convolutions on GPUs and on most CPUs)")
    amp: str | None = option(None, "autocast the forward; weights and updates stay fp32", choices=["bf16", "fp16"])
    gpu_transform: bool = option(False, "Data layers ship uint8 pixels; crop, mean, scale and mirror run on the device")
    data_in_memory: bool = option(False, "decode each database once into one uint8 tensor on the device (GPU memory "
                                         "with --device cuda) and batch from there; implies --gpu-transform")

    def _changed(self) -> list[tuple[str, object]]:
        """(option, value) of each device setting that differs from the default, in declaration order (a subclass's
        own fields, such as the engine's worker count, are not device options)."""
        default = DeviceOptions()
        return [(f"--{f.name.replace('_', '-')}", getattr(self, f.name)) for f in fields(DeviceOptions)
                if getattr(self, f.name) != getattr(default, f.name)]

    @property
    def flags(self) -> list[str]:
        """The command-line options that give these settings (the defaults left out), as a printed command shows
        them."""
        return [part for flag, value in self._changed() for part in ([flag] if value is True else [flag, str(value)])]

    @property
    def torch_only(self) -> list[str]:
        """The options set here that only the torch engine has (Caffe trains in fp32 NCHW from its own loader):
        every setting but the device."""
        return [flag for flag, _ in self._changed() if flag != "--device"]
