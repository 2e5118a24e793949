"""Caffe's LR policies (SGDSolver::GetLearningRate), checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb
from squeezecaffe.solvers.lr_policy import learning_rate, multistep_current_step


def solver(**kw) -> pb.SolverParameter:
    return pb.SolverParameter(base_lr=0.1, **kw)


def test_policies_match_caffe_formulas() -> None:
    assert learning_rate(solver(lr_policy="fixed"), 500) == pytest.approx(0.1)
    assert learning_rate(solver(lr_policy="step", gamma=0.1, stepsize=100), 250) == pytest.approx(0.1 * 0.1**2)
    assert learning_rate(solver(lr_policy="exp", gamma=0.99), 10) == pytest.approx(0.1 * 0.99**10)
    assert learning_rate(solver(lr_policy="inv", gamma=1e-4, power=0.75), 1000) == pytest.approx(0.1 * 1.1**-0.75)
    assert learning_rate(solver(lr_policy="poly", power=0.9, max_iter=40), 10) == pytest.approx(0.1 * 0.75**0.9)
    assert learning_rate(solver(lr_policy="poly", power=1.0, max_iter=40), 40) == pytest.approx(0.0)
    sig = solver(lr_policy="sigmoid", gamma=-0.05, stepsize=100)
    assert learning_rate(sig, 120) == pytest.approx(0.1 / (1 + math.exp(0.05 * 20)))
    ms = solver(lr_policy="multistep", gamma=0.5, stepvalue=[10, 30])
    assert [learning_rate(ms, i) for i in (9, 10, 29, 30)] == pytest.approx([0.1, 0.05, 0.05, 0.025])
    assert multistep_current_step(ms, 35) == 2


def test_bad_policies_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown lr_policy 'cosine'"):
        learning_rate(solver(lr_policy="cosine"), 1)
    with pytest.raises(UserError, match="'poly' needs max_iter > 0"):
        learning_rate(solver(lr_policy="poly", power=1.0), 1)
