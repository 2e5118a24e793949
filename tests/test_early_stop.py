"""The early stop, driven by scripted sequences and replayed on logged validation sequences of real runs.

The replay feeds each logged run's validation top-1, epoch by epoch, to the controller with the run's own epoch
length, early stop on, and requires that it never ends a run before its best epoch; and that where the run went on
long after its best, it ends it sooner. The controller's LR decisions are those the logged run made (the early stop
changes none of them), so the replay is what the run would have done.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from squeezecaffe.errors import UserError
from squeezecaffe.train.plateau import PlateauController, PlateauOptions

SCRIPTED = {"early_stop_patience": 3, "early_stop_patience_iterations": 0}
SEQUENCES = json.loads((Path(__file__).parent / "fixtures" / "val_sequences.json").read_text(encoding="utf-8"))


def replay(top1s: list[float], **options) -> PlateauController:
    """The controller fed `top1s` until it stops; the scripted tests below fix the early stop's patience at 3
    epochs (no iteration floor) to show its mechanics, the replays of logged runs use the defaults."""
    ctl = PlateauController(PlateauOptions(**options))
    for top1 in top1s:
        ctl.update(top1)
        if ctl.stop:
            break
    return ctl


def test_a_flat_run_ends_once_the_drop_after_its_best_had_its_patience() -> None:
    ctl = replay([0.5] * 30, **SCRIPTED)
    # epoch 1 is the best; patience 2 drops the rate after epoch 3; 3 more epochs without a new best end the run
    assert ctl.stop and ctl.epochs == 6 and ctl.last_event == "plateau 1/2; early stop"
    assert ctl.stop_reason.startswith("early stop: no gain of 0.1 point over epoch 1's val top-1 (50.00%) in the 3 "
                                      "epochs since the LR drop after it (epoch 3)")
    assert ctl.scale == pytest.approx(0.1)  # drops after epochs 3 and 5: long before --stop-below


def test_a_new_best_after_the_drop_restarts_the_wait() -> None:
    ctl = replay([0.5, 0.5, 0.5, 0.5, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52], **SCRIPTED)
    # the drop after epoch 3 gave a new best at epoch 5; the next drop (epoch 7, two epochs without the 1-point
    # gain the plateau counts) is the first after that best and has had 3 epochs at epoch 10
    assert ctl.best_epoch == 5 and ctl.drop_epoch == 7 and ctl.epochs == 10 and ctl.stop
    # once armed, a new best with no drop after it ends the run its patience later
    # (a cooldown keeps the controller from dropping again after epoch 3)
    slow = replay([0.5, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6], **SCRIPTED, cooldown=5)
    assert slow.armed and slow.best_epoch == 4 and slow.drop_epoch == 0 and slow.epochs == 7 and slow.stop
    assert not replay([0.5, 0.51, 0.52, 0.53, 0.53, 0.53, 0.53], **SCRIPTED, patience=9).stop  # never dropped


def test_gains_below_the_delta_are_not_a_new_best() -> None:
    ctl = replay([0.5, 0.5, 0.5, 0.5005, 0.5009, 0.5, 0.5], **SCRIPTED, early_stop_delta=0.001)
    assert ctl.best_epoch == 1 and ctl.stop and ctl.epochs == 6
    assert replay([0.5, 0.5, 0.5, 0.5005, 0.5009, 0.5, 0.5], **SCRIPTED, early_stop_delta=0.0).best_epoch == 5


def test_no_early_stop_and_a_short_epoch_patience() -> None:
    assert not replay([0.5] * 12, **SCRIPTED, early_stop=False, stop_below=0).stop
    # the defaults on 36-iteration epochs: the plateau's patience is 14 epochs (500 iterations), the early stop's 3
    # (its 100-iteration floor); on long epochs its 2 epochs
    short = replay([0.5] * 40, iterations_per_epoch=36)
    assert short.early_stop_patience == 3 and short.drop_epoch == 15 and short.epochs == 18 and short.stop
    assert PlateauController(PlateauOptions(iterations_per_epoch=891)).early_stop_patience == 2


def test_the_early_stop_resumes_where_it_was() -> None:
    seq = [0.5, 0.6, 0.6, 0.6, 0.61, 0.6, 0.6, 0.6, 0.6, 0.6]
    straight = replay(seq)
    first = replay(seq[:5])
    resumed = PlateauController()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for top1 in seq[5:]:
        resumed.update(top1)
        if resumed.stop:
            break
    assert (resumed.epochs, resumed.stop_reason, resumed.history) == (straight.epochs, straight.stop_reason,
                                                                      straight.history)


def test_a_drop_decided_at_the_best_epoch_counts() -> None:
    """Epoch 3 is a new best by 0.1 point but no plateau progress (1 point): its drop acts after it, so the wait
    starts there."""
    ctl = replay([0.5, 0.5, 0.501, 0.5, 0.5, 0.5, 0.5], **SCRIPTED)
    assert ctl.best_epoch == 3 and ctl.drop_epoch == 3 and ctl.epochs == 6 and ctl.stop


def test_the_guards_recovery_restarts_the_wait() -> None:
    """A divergence restores the best snapshot and divides the rate (force_drop): the restored weights get the
    early stop's whole patience at the new rate, however long ago the last drop was."""
    ctl = replay([0.5, 0.5, 0.5, 0.5, 0.5], **SCRIPTED)  # drop after epoch 3; epoch 5 waited 2
    ctl.force_drop()
    ctl.update(0.5)
    ctl.update(0.5)
    assert not ctl.stop and ctl.drop_epoch == 5
    ctl.update(0.5)
    assert ctl.stop and ctl.epochs == 8


def test_a_snapshot_from_before_the_early_stop_resumes_with_its_history_replayed() -> None:
    """A marker written before the early stop existed has no `best`: the bookkeeping is rebuilt from its
    history, so the resumed run stops where a run with the early stop all along would have."""
    seq = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    straight = replay(seq)
    old = replay(seq[:4]).state_dict()
    for key in ("best", "best_epoch", "drop_epoch"):
        del old[key]
    for key in ("early_stop", "early_stop_patience", "early_stop_patience_iterations", "early_stop_delta"):
        del old["options"][key]
    resumed = PlateauController()
    resumed.load_state_dict(json.loads(json.dumps(old)))
    assert (resumed.best, resumed.best_epoch, resumed.drop_epoch) == (0.6, 2, 4)
    for top1 in seq[4:]:
        resumed.update(top1)
        if resumed.stop:
            break
    assert resumed.epochs == straight.epochs and resumed.stop


def test_bad_early_stop_options_are_refused() -> None:
    for bad in ({"early_stop_patience": 0}, {"early_stop_patience_iterations": -1}, {"early_stop_delta": 1.0}):
        with pytest.raises(UserError):
            PlateauOptions(**bad)


@pytest.mark.parametrize("name", sorted(SEQUENCES["runs"]))
def test_replayed_on_logged_runs_it_never_ends_before_the_best_epoch(name: str) -> None:
    run = SEQUENCES["runs"][name]
    top1s = run["val_top1"]
    options = {"iterations_per_epoch": run["iterations_per_epoch"], **run.get("plateau", {})}
    best_epoch = top1s.index(max(top1s)) + 1
    ctl = replay(top1s, **options)
    assert ctl.epochs >= best_epoch, f"{name}: ended after epoch {ctl.epochs}, its best was epoch {best_epoch}"
    # the early stop changes no LR decision of the run it replays
    plain = replay(top1s[:ctl.epochs], **options, early_stop=False, stop_below=0)
    assert [h["scale"] for h in ctl.history] == [h["scale"] for h in plain.history]
    if "stops_after" in run:  # where the early stop ended the real run (or, for the full demo, will)
        assert ctl.epochs == run["stops_after"]
    if ctl.epochs < len(top1s):  # it saved epochs: the best it kept is the run's best
        assert max(top1s[:ctl.epochs]) == max(top1s)
