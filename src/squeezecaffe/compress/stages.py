"""The two lossy stages of Deep Compression as data: prune (magnitude masks) and quantize (k-means shared values),
each a step that changes the weights and says what retraining must hold them to; `compress` runs them in one loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from squeezecaffe.caffe_rules.blobs import blob_shape, blob_values
from squeezecaffe.compress.codec import CodedBlob
from squeezecaffe.compress.kmeans import kmeans_1d
from squeezecaffe.compress.plan import BlobPlan
from squeezecaffe.compress.prune import magnitude_mask
from squeezecaffe.engines.torchcaffe.constraints import BlobConstraint
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, set_float_data


def _weight(model: pb.NetParameter, layer: str) -> tuple[pb.BlobProto, np.ndarray]:
    lp = next(lp for lp in model.layer if lp.name == layer)
    blob = lp.blobs[0]
    return blob, blob_values(blob).astype(np.float32).reshape(blob_shape(blob))


def _set_weight(model: pb.NetParameter, layer: str, values: np.ndarray) -> None:
    blob, _ = _weight(model, layer)
    del blob.double_data[:]
    set_float_data(blob, np.asarray(values, np.float32).reshape(-1))


def prune(model: pb.NetParameter, plans: list[BlobPlan]) -> tuple[pb.NetParameter, list[BlobConstraint]]:
    """The model with each planned blob magnitude-pruned to its density, and the masks."""
    out = pb.NetParameter()
    out.CopyFrom(model)
    masks = []
    for plan in plans:
        _, w = _weight(out, plan.layer)
        mask = magnitude_mask(w, plan.kept)
        _set_weight(out, plan.layer, np.where(mask, w, np.float32(0)))
        masks.append(BlobConstraint(plan.layer, 0, mask=mask))
    return out, masks


def quantize(model: pb.NetParameter, plans: list[BlobPlan], masks: list[BlobConstraint]
             ) -> tuple[pb.NetParameter, dict[str, CodedBlob]]:
    """The model with each planned blob's kept weights replaced by their k-means (2^bits) shared values."""
    out = pb.NetParameter()
    out.CopyFrom(model)
    by_layer = {m.layer: m.kept() for m in masks}
    coded = {}
    for plan in plans:
        _, w = _weight(out, plan.layer)
        kept = by_layer[plan.layer]
        codebook, labels = kmeans_1d(w[kept], 1 << plan.bits)
        clusters = np.full(w.shape, -1, np.int32)
        clusters[kept] = labels
        coded[plan.layer] = CodedBlob(codebook, clusters, plan.bits, plan.index_bits)
        _set_weight(out, plan.layer, coded[plan.layer].values())
    return out, coded


def read_shared_values(model: pb.NetParameter, coded: dict[str, CodedBlob], where: str) -> dict[str, CodedBlob]:
    """Codebooks read back from fine-tuned weights: every member of a cluster must hold the same value (the
    constraint keeps them tied), and pruned weights must be zero."""
    out = {}
    for layer, blob in coded.items():
        _, w = _weight(model, layer)
        codebook = blob.codebook.copy()
        flat, clusters = w.reshape(-1), blob.clusters.reshape(-1)
        if np.any(flat[clusters < 0] != 0):
            raise UserError(f"{where}: layer '{layer}' has non-zero pruned weights; it is not the retrained model")
        members = clusters >= 0
        used, first = np.unique(clusters[members], return_index=True)  # one member of each cluster in use
        codebook[used] = flat[members][first]
        if np.any(flat[members] != codebook[clusters[members]]):
            raise UserError(f"{where}: layer '{layer}' has weights of one cluster that differ; its shared values "
                            "were not held during fine-tuning")
        out[layer] = replace(blob, codebook=codebook.astype(np.float32))
    return out


@dataclass
class Held:
    """What the stages so far hold the weights to: the pruning masks, then the shared values (codebook, clusters)."""

    masks: list[BlobConstraint] = field(default_factory=list)
    coded: dict[str, CodedBlob] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One stage: `apply` changes the weights and returns the constraints retraining holds (saved as
    `constraints_file`); `reread` takes back what retraining moved (the shared values); `scored_after`: the stage's
    own model.caffemodel is scored (the quantized one is scored as the decoded .sqz instead)."""

    name: str  # the stage's folder and name
    constraints_file: str
    apply: Callable[[pb.NetParameter, list[BlobPlan], Held], tuple[pb.NetParameter, list[BlobConstraint]]]
    reread: Callable[[pb.NetParameter, Held, str], None]
    scored_after: bool


def _prune_step(model: pb.NetParameter, plans: list[BlobPlan], held: Held
                ) -> tuple[pb.NetParameter, list[BlobConstraint]]:
    pruned, held.masks = prune(model, plans)
    return pruned, held.masks


def _quantize_step(model: pb.NetParameter, plans: list[BlobPlan], held: Held
                   ) -> tuple[pb.NetParameter, list[BlobConstraint]]:
    quantized, held.coded = quantize(model, plans, held.masks)
    return quantized, [BlobConstraint(layer, 0, clusters=c.clusters) for layer, c in held.coded.items()]


def _masks_stay(model: pb.NetParameter, held: Held, where: str) -> None:
    """Retraining under masks moves the kept weights only; the masks are what they were."""


def _shared_values_moved(model: pb.NetParameter, held: Held, where: str) -> None:
    held.coded = read_shared_values(model, held.coded, where)


STEPS = (Step("pruned", "masks.npz", _prune_step, _masks_stay, scored_after=True),
         Step("quantized", "clusters.npz", _quantize_step, _shared_values_moved, scored_after=False))
