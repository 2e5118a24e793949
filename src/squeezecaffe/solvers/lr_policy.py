"""Caffe's learning-rate policies as pure functions of the iteration, shared by every engine.

Each equals SGDSolver::GetLearningRate for the same SolverParameter. `step` also returns the
current_step Caffe keeps for multistep (it is saved in the .solverstate).
"""

from __future__ import annotations

import math

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb


def multistep_current_step(solver: pb.SolverParameter, it: int, current_step: int = 0) -> int:
    """Caffe advances current_step while iter >= stepvalue[current_step]."""
    while current_step < len(solver.stepvalue) and it >= solver.stepvalue[current_step]:
        current_step += 1
    return current_step


def learning_rate(solver: pb.SolverParameter, it: int, current_step: int = 0, base_lr: float | None = None) -> float:
    """The rate at iteration `it`; `base_lr` replaces solver.base_lr (a training controller's scaled rate)."""
    policy = solver.lr_policy
    base = solver.base_lr if base_lr is None else base_lr
    if policy == "fixed":
        return base
    if policy == "step":
        if solver.stepsize <= 0:
            raise UserError("lr_policy 'step' needs stepsize > 0")
        return base * solver.gamma ** (it // solver.stepsize)
    if policy == "exp":
        return base * solver.gamma**it
    if policy == "inv":
        return base * (1 + solver.gamma * it) ** (-solver.power)
    if policy == "multistep":
        return base * solver.gamma ** multistep_current_step(solver, it, current_step)
    if policy == "poly":
        if solver.max_iter <= 0:
            raise UserError("lr_policy 'poly' needs max_iter > 0")
        return base * (1.0 - it / solver.max_iter) ** solver.power
    if policy == "sigmoid":
        return base * (1.0 / (1.0 + math.exp(-solver.gamma * (it - solver.stepsize))))
    raise UserError(f"unknown lr_policy '{policy}' (known: fixed, step, exp, inv, multistep, poly, sigmoid)")
