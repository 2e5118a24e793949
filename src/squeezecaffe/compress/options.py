"""The `compress` verb's settings, declared once; free of torch so the parser can be built without an engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from squeezecaffe.engines.device import device_field
from squeezecaffe.errors import UserError
from squeezecaffe.options import NOT_AN_OPTION, option

# The retraining rate, as a fraction of the source run's base_lr. A tenth (Deep Compression's fine-tuning rate for a
# converged ImageNet model) left a small set's pruned fullbypass8 two points below its dense validation top-1 after
# 500 iterations, still climbing slowly; half of it was back above the dense figure within a few epochs
# (docs/compression.md, "Measured"). Most runs this tool trains end a short schedule, not a converged one.
RETRAIN_LR_FACTOR = 0.5
# The default retraining length per stage: one epoch, and at least this many iterations. One epoch of a small set
# is a handful of updates, too few to recover from pruning two thirds of the weights.
RETRAIN_MIN_ITERATIONS = 500


@dataclass
class CompressOptions:
    """The `compress` verb's settings; its options are generated from these fields (default and help here)."""

    data: str | None = option(None, "build-lmdb directory to retrain and evaluate on (default: the run's)")
    split: str | None = option(None, "split evaluated at each stage (default: test, else val)")
    density: str = option("auto", "fraction of weights kept: auto (by role), paper (SqueezeNet v1.0's Table 1), a "
                                  "number, PATTERN=D,... or a file of 'PATTERN D' lines")
    bits: str = option("6", "cluster-index bits: one number, or by kind/pattern, e.g. conv=8,fc=5")
    index_bits: str = option("conv=8,fc=5", "bound of the relative position of the next kept weight (the paper's)")
    retrain_epochs: int | None = option(None, "epochs of retraining after pruning and of fine-tuning after "
                                              "quantization (0: none; default: one, raised on a small data set "
                                              f"until each stage runs {RETRAIN_MIN_ITERATIONS} iterations)")
    retrain_lr: float | None = option(None, f"base_lr of both retraining runs (default: {RETRAIN_LR_FACTOR:g} x the "
                                            "run's)")
    centroid_gradient: str = option("mean", "a shared value's gradient: the mean or the sum of its weights' "
                                            "gradients", choices=["mean", "sum"])
    bn_images: int = option(4096, "with --retrain-epochs 0: re-estimate BatchNorm's statistics of the pruned and "
                                  "of the quantized model over N training images (0: keep the dense model's)",
                            metavar="N")
    batch_size: int | None = option(None, "retraining batch (default: the run's)")
    device: str = device_field()
    seed: int = option(42, "seed of the retraining runs")
    force: bool = option(False, "replace an earlier compression in --out")
    progress: bool = field(default=True, metadata=NOT_AN_OPTION)  # the verb's --quiet

    def __post_init__(self) -> None:
        """Settings refused before anything is read or written (one line each, as the CLI prints them)."""
        if self.retrain_epochs is not None and self.retrain_epochs < 0:
            raise UserError(f"--retrain-epochs {self.retrain_epochs}: must be 0 or more")
        if self.bn_images < 0:
            raise UserError(f"--bn-images {self.bn_images}: give a number of images >= 0 (0: keep the dense "
                            "model's statistics)")
        if self.retrain_lr is not None and not self.retrain_lr > 0:
            raise UserError(f"--retrain-lr {self.retrain_lr:g}: must be positive")
        if self.batch_size is not None and self.batch_size <= 0:
            raise UserError(f"--batch-size {self.batch_size}: must be positive")
