"""The plateau controller driven by scripted accuracy sequences."""

from __future__ import annotations

import json

import pytest

from squeezecaffe.errors import UserError
from squeezecaffe.train.plateau import PlateauController, PlateauOptions


def scales(seq, **options) -> list[float]:
    ctl = PlateauController(PlateauOptions(**options))
    return [ctl.update(a) for a in seq]


def test_steady_gains_never_drop():
    assert scales([0.1, 0.12, 0.2, 0.3, 0.31, 0.4]) == [1.0] * 6


def test_a_two_epoch_plateau_divides_by_5_then_the_next_by_2_then_5():
    seq = [0.30, 0.305, 0.309,  # two epochs without a 1-point gain -> /5
           0.309, 0.309,  # again -> /2
           0.30, 0.30]  # again -> /5
    assert scales(seq) == [1, 1, 0.2, 0.2, 0.1, 0.1, 0.02]


def test_gains_below_min_delta_count_as_no_gain_and_the_anchor_stays():
    # 0.5 -> 0.509 -> 0.518: each step < 1 point from the anchor 0.5, but the second is 1.8 points above it
    assert scales([0.5, 0.509, 0.518]) == [1, 1, 1]
    assert scales([0.5, 0.509, 0.5095]) == [1, 1, 0.2]


def test_drop_then_recovery_resets_the_counter():
    ctl = PlateauController()
    for a in [0.4, 0.4, 0.4]:
        ctl.update(a)
    assert ctl.scale == 0.2 and ctl.last_event == "lr / 5"
    ctl.update(0.45)  # recovery
    assert ctl.last_event == "improved" and ctl.counter == 0
    ctl.update(0.45)
    assert ctl.scale == 0.2  # one flat epoch is not a plateau
    ctl.update(0.45)
    assert ctl.scale == 0.1


def test_resume_mid_plateau_makes_the_same_decisions():
    seq = [0.2, 0.3, 0.3, 0.3, 0.31, 0.35, 0.35, 0.35, 0.35, 0.36]
    straight = scales(seq)
    first = PlateauController()
    out = [first.update(a) for a in seq[:3]]  # stops one epoch into a plateau
    assert first.counter == 1
    resumed = PlateauController.from_state_dict(json.loads(json.dumps(first.state_dict())))
    out += [resumed.update(a) for a in seq[3:]]
    assert out == straight
    assert resumed.history[:3] == first.history


def test_min_lr_cooldown_and_stop_after():
    assert scales([0.5] * 7, base_lr=0.1, min_lr=0.01) == [1, 1, 0.2, 0.2, 0.1, 0.1, 0.1]
    assert scales([0.5] * 6, cooldown=1) == [1, 1, 0.2, 0.2, 0.2, 0.1]
    ctl = PlateauController(PlateauOptions(stop_after=2, early_stop=False))
    for a in [0.5, 0.5, 0.5, 0.5]:
        ctl.update(a)
        assert not ctl.stop
    ctl.update(0.5)
    assert ctl.stop and ctl.last_event.endswith("stop") and ctl.stop_reason == "no improvement after the last 2 LR drops"


# validation top-1 after each of the 20 epochs of `make demo FULL=1` (fullbypass8, all of Fashion-MNIST): the
# controller divided the rate at epochs 7, 10, 12, 14, 16, 18 and 20, the best epoch was the 15th
FULL_DEMO = [0.9020, 0.9117, 0.9153, 0.9207, 0.9283, 0.9213, 0.9233, 0.9427, 0.9427, 0.9417, 0.9443, 0.9433, 0.9477,
             0.9490, 0.9497, 0.9493, 0.9487, 0.9487, 0.9483, 0.9487]


def test_a_run_stops_once_the_scale_falls_below_stop_below():
    ctl = PlateauController(PlateauOptions(early_stop=False))
    while not ctl.stop and ctl.epochs < 30:
        ctl.update(0.5)
    # epoch 1 improves on nothing; then a drop every 2 epochs: 0.2, 0.1, 0.02, 0.01, 0.002, 0.001, and the 7th,
    # after epoch 15, takes the scale to 0.0002 < 1e-3
    assert ctl.epochs == 15 and ctl.scale == pytest.approx(2e-4) and ctl.last_event == "lr / 5; stop (scale below 0.001)"
    assert ctl.stop_reason == "the LR scale fell below --stop-below 0.001"
    never = PlateauController(PlateauOptions(stop_below=0, early_stop=False))
    for _ in range(40):
        never.update(0.5)
    assert not never.stop and never.scale < 1e-6
    demo = PlateauController(PlateauOptions(iterations_per_epoch=891, early_stop=False))  # 57,000 images, batch 64
    for top1 in FULL_DEMO[:-1]:
        demo.update(top1)
        assert not demo.stop  # the full demo runs to its end: the stop comes with its last drop, after epoch 20
    demo.update(FULL_DEMO[-1])
    assert demo.stop and demo.scale == pytest.approx(2e-4)
    assert [h["epoch"] for h in demo.history if h["event"].startswith("lr /")] == [7, 10, 12, 14, 16, 18, 20]


def test_patience_spans_at_least_patience_iterations():
    """Short epochs (a small set at a large batch) get more of them before a drop; long ones keep `patience`."""
    short = PlateauController(PlateauOptions(iterations_per_epoch=36))  # 4,500 images at batch 128
    assert short.patience == 14  # ceil(500 / 36)
    for _ in range(16):
        short.update(0.5)
    assert [h["event"] for h in short.history][12:] == ["plateau 12/14", "plateau 13/14", "lr / 5", "plateau 1/14"]
    assert [h["epoch"] for h in short.history if h["event"].startswith("lr /")] == [15]  # epoch 1 improved
    assert PlateauController(PlateauOptions(iterations_per_epoch=891)).patience == 2  # the full demo's epochs
    assert PlateauController(PlateauOptions(iterations_per_epoch=8, patience_iterations=0)).patience == 2


def test_bad_options_are_refused():
    with pytest.raises(UserError, match="factors 1: each must be > 1"):
        PlateauOptions(factors=(1.0,))
    with pytest.raises(UserError, match="patience 0"):
        PlateauOptions(patience=0)
    with pytest.raises(UserError, match="stop-below -1"):
        PlateauOptions(stop_below=-1)
