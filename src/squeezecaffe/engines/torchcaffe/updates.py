"""Caffe's per-parameter update rules, applied in place to a gradient tensor.

Each function turns the (normalised, regularised) gradient `diff` into the step that
`w -= diff` applies, updating its history tensors, with the same operation order as Caffe's
SGDSolver::ComputeUpdateValue and its subclasses. The learning rate is folded into the SGD and
Nesterov histories, so a changed rate takes effect gradually, unlike torch.optim.
"""

from __future__ import annotations

import math

from torch import Tensor

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

# Solver type names as Caffe accepts them in `type:`, and the legacy `solver_type` enum.
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
_LEGACY = {pb.SolverParameter.SGD: "SGD", pb.SolverParameter.NESTEROV: "Nesterov",
           pb.SolverParameter.ADAGRAD: "AdaGrad", pb.SolverParameter.RMSPROP: "RMSProp",
           pb.SolverParameter.ADADELTA: "AdaDelta", pb.SolverParameter.ADAM: "Adam"}


def solver_type(sp: pb.SolverParameter) -> str:
    name = sp.type if sp.HasField("type") else _LEGACY[sp.solver_type]
    for known in SOLVER_TYPES:
        if name.lower() == known.lower():
            return known
    raise UserError(f"solver type '{name}' is not supported (known: {', '.join(SOLVER_TYPES)})")


def history_slots(kind: str) -> int:
    """History blobs per parameter: two for AdaDelta (gradients, updates) and Adam (m, v)."""
    return 2 if kind in ("AdaDelta", "Adam") else 1


def compute_update(kind: str, sp: pb.SolverParameter, diff: Tensor, hist: list[Tensor], local_rate: float,
                   it: int) -> None:
    """Overwrite `diff` with the update for one parameter; `hist` are its history tensors."""
    m = sp.momentum
    if kind == "SGD":
        h = hist[0]
        h.mul_(m).add_(diff, alpha=local_rate)
        diff.copy_(h)
    elif kind == "Nesterov":
        h = hist[0]
        old = h.clone()
        h.mul_(m).add_(diff, alpha=local_rate)
        diff.copy_(h * (1 + m) - old * m)
    elif kind == "AdaGrad":
        h = hist[0]
        h.add_(diff * diff)
        diff.copy_(diff / (h.sqrt() + sp.delta) * local_rate)
    elif kind == "RMSProp":
        h = hist[0]
        h.mul_(sp.rms_decay).add_(diff * diff, alpha=1 - sp.rms_decay)
        diff.copy_(diff / (h.sqrt() + sp.delta) * local_rate)
    elif kind == "AdaDelta":
        grads, updates = hist
        grads.mul_(m).add_(diff * diff, alpha=1 - m)
        step = diff * ((updates + sp.delta) / (grads + sp.delta)).sqrt()
        updates.mul_(m).add_(step * step, alpha=1 - m)
        diff.copy_(step * local_rate)
    elif kind == "Adam":
        m1, v = hist
        b1, b2 = m, sp.momentum2
        t = it + 1
        correction = math.sqrt(1 - b2**t) / (1 - b1**t)
        m1.mul_(b1).add_(diff, alpha=1 - b1)
        v.mul_(b2).add_(diff * diff, alpha=1 - b2)
        diff.copy_(m1 / (v.sqrt() + sp.delta) * (local_rate * correction))
    else:  # pragma: no cover - solver_type() validates names
        raise UserError(f"solver type '{kind}' is not supported")
