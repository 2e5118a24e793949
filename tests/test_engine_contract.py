"""Both training engines satisfy engines/contract.py's TrainingEngine: every member, with the same parameters."""

from __future__ import annotations

import inspect

import pytest

from squeezecaffe.engines.contract import TrainingEngine
from squeezecaffe.engines.pycaffe.solver import PycaffeSolver
from squeezecaffe.engines.torchcaffe.adapter import TorchEngine


def contract_members() -> dict[str, inspect.Signature | None]:
    """Methods with their signatures; properties and attributes as None."""
    members: dict[str, inspect.Signature | None] = {name: None for name in TrainingEngine.__annotations__}
    for name, value in vars(TrainingEngine).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members[name] = None
        elif inspect.isfunction(value):
            members[name] = inspect.signature(value)
    return members


def parameters(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_the_contract_names_what_the_trainer_calls():
    assert {"step", "validate", "snapshot", "restore", "set_lr_scale", "iter", "sp", "close"} <= set(contract_members())


@pytest.mark.parametrize("engine", [TorchEngine, PycaffeSolver])
def test_each_engine_offers_every_member_with_the_same_parameters(engine):
    for name, sig in contract_members().items():
        if name == "sp":  # an attribute both set in __init__
            assert "self.sp =" in inspect.getsource(engine.__init__), f"{engine.__name__} sets no sp"
            continue
        assert getattr(engine, name, None) is not None, f"{engine.__name__} lacks {name}"
        if sig is None:
            assert isinstance(inspect.getattr_static(engine, name), property), f"{engine.__name__}.{name}"
            continue
        assert callable(getattr(engine, name)), f"{engine.__name__}.{name} is not a method"
        theirs = inspect.signature(getattr(engine, name))
        assert parameters(theirs) == parameters(sig), f"{engine.__name__}.{name}{theirs} is not {name}{sig}"


def test_a_missing_member_is_caught():
    class Partial(TorchEngine):
        validate = None  # type: ignore[assignment]

    with pytest.raises(AssertionError):
        test_each_engine_offers_every_member_with_the_same_parameters(Partial)


def test_a_changed_parameter_is_caught():
    class Renamed(TorchEngine):
        def restore(self, path, lr_scale=1.0):  # the contract names it `state`
            return super().restore(path, lr_scale)

    with pytest.raises(AssertionError, match="restore"):
        test_each_engine_offers_every_member_with_the_same_parameters(Renamed)
