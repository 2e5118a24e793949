"""Caffe's loss and metric layers for the torch engine: SoftmaxWithLoss with Caffe's probability clamp and
normalisation (its gradient is Caffe's, not the clamp's derivative) and Accuracy with ignore_label and top-k."""

from __future__ import annotations

import math

import torch

from squeezecaffe.caffe_rules.shapes import canonical_axis
from squeezecaffe.engines.torchcaffe.layer_base import FLT_MIN, CaffeLayer, register, wide
from squeezecaffe.proto import pb


def _loss_normalizer(lp: pb.LayerParameter, outer: int, inner: int, valid: int) -> float:
    """Caffe's LossLayer normalisation (the legacy `normalize` bool maps to VALID / BATCH_SIZE)."""
    p = lp.loss_param
    mode = p.normalization
    if p.HasField("normalize") and not p.HasField("normalization"):
        mode = pb.LossParameter.VALID if p.normalize else pb.LossParameter.BATCH_SIZE
    value = {
        pb.LossParameter.FULL: outer * inner,
        pb.LossParameter.VALID: valid,
        pb.LossParameter.BATCH_SIZE: outer,
        pb.LossParameter.NONE: 1,
    }[mode]
    return max(1.0, float(value))


class _SoftmaxLoss(torch.autograd.Function):
    """Caffe's SoftmaxWithLoss: loss = -sum log(max(p_label, FLT_MIN)) / normalizer;
    gradient (p - onehot) / normalizer at valid positions (the clamp does not enter the gradient)."""

    @staticmethod
    def forward(ctx, logits, labels, axis, ignore_label, normalizer):
        prob = torch.softmax(wide(logits), dim=axis)
        lab = labels.long()
        valid = torch.ones_like(lab, dtype=torch.bool) if ignore_label is None else lab != ignore_label
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        picked = prob.gather(axis, safe.unsqueeze(axis)).squeeze(axis)
        nll = -torch.log(picked.clamp_min(FLT_MIN))
        loss = torch.where(valid, nll, torch.zeros_like(nll)).sum() / normalizer
        ctx.save_for_backward(prob, safe, valid)
        ctx.axis, ctx.normalizer, ctx.in_dtype = axis, normalizer, logits.dtype
        return loss.to(wide(logits).dtype), prob.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss, grad_prob):
        prob, safe, valid = ctx.saved_tensors
        grad = prob.clone()
        grad.scatter_add_(ctx.axis, safe.unsqueeze(ctx.axis), -torch.ones_like(prob).narrow(ctx.axis, 0, 1))
        grad = grad * valid.unsqueeze(ctx.axis).to(grad.dtype)
        grad = grad * (grad_loss.to(grad.dtype) / ctx.normalizer)
        return grad.to(ctx.in_dtype), None, None, None, None


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(CaffeLayer):
    def forward(self, bottoms):
        logits, labels = bottoms
        axis = canonical_axis(self.lp.softmax_param.axis, logits.dim())
        outer = math.prod(logits.shape[:axis])
        inner = math.prod(logits.shape[axis + 1 :])
        if labels.numel() != outer * inner:
            raise self.fail(f"{labels.numel()} labels for {outer * inner} predictions")
        labels = labels.reshape(*logits.shape[:axis], *logits.shape[axis + 1 :])
        ignore = self.lp.loss_param.ignore_label if self.lp.loss_param.HasField("ignore_label") else None
        valid = outer * inner if ignore is None else int((labels.long() != ignore).sum())
        normalizer = _loss_normalizer(self.lp, outer, inner, valid)
        loss, prob = _SoftmaxLoss.apply(logits, labels, axis, ignore, normalizer)
        return [loss, prob][: len(self.lp.top)]


@register("Accuracy")
class Accuracy(CaffeLayer):
    """Caffe's rule: a prediction is right when fewer than top_k classes score strictly higher
    than the true class (so ties count in the prediction's favour)."""

    def forward(self, bottoms):
        scores, labels = wide(bottoms[0].detach()), bottoms[1].detach()
        p = self.lp.accuracy_param
        axis = canonical_axis(p.axis, scores.dim())
        classes = scores.shape[axis]
        scores = scores.movedim(axis, -1).reshape(-1, classes)
        lab = labels.reshape(-1).long()
        valid = lab != p.ignore_label if p.HasField("ignore_label") else torch.ones_like(lab, dtype=torch.bool)
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        true_score = scores.gather(1, safe[:, None])
        correct = ((scores > true_score).sum(1) < p.top_k) & valid
        count = valid.sum().clamp_min(1)  # on the device: reading it would wait for the device every batch
        acc = correct.sum().float() / count.float()
        tops = [acc.to(bottoms[0].dtype)]
        if len(self.lp.top) > 1:
            per_class_n = torch.bincount(safe[valid], minlength=classes).float()
            per_class_ok = torch.bincount(safe[correct], minlength=classes).float()
            per_class = torch.where(per_class_n > 0, per_class_ok / per_class_n.clamp_min(1), torch.zeros_like(per_class_n))
            tops.append(per_class.to(bottoms[0].dtype))
        return tops
