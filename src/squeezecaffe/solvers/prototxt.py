"""solver.prototxt for a generated net: Nesterov momentum + poly LR, sized in epochs."""

from __future__ import annotations

from google.protobuf import text_format

from squeezecaffe.errors import UserError
from squeezecaffe.netgen.config import NetConfig
from squeezecaffe.proto import pb
from squeezecaffe.solvers.schedule import TrainSchedule, iterations_per_epoch, test_iterations


def build_solver(
    cfg: NetConfig,
    sched: TrainSchedule,
    net_path: str,
    snapshot_prefix: str,
    overrides: dict[str, str] | None = None,
) -> pb.SolverParameter:
    """Test and snapshot once per epoch; max_iter = epochs x iterations per epoch.

    `overrides` maps any SolverParameter field to a value in text-format spelling
    (`base_lr=0.01`, `type=Adam`, `solver_mode=CPU`); they are applied last.
    """
    epoch = iterations_per_epoch(sched.train_size, cfg.batch_size * sched.world, sched.iter_size)
    s = pb.SolverParameter(
        net=net_path,
        test_iter=[test_iterations(sched.val_size, cfg.test_batch_size)],
        test_interval=epoch,
        test_initialization=False,
        base_lr=sched.base_lr,
        display=min(epoch, 20),
        average_loss=min(epoch, 20),
        max_iter=sched.epochs * epoch,
        iter_size=sched.iter_size,
        lr_policy=sched.lr_policy,
        power=sched.power,
        momentum=sched.momentum,
        weight_decay=sched.weight_decay,
        snapshot=epoch,
        snapshot_prefix=snapshot_prefix,
        random_seed=42,
        type=sched.solver_type,
    )
    if sched.lr_policy != "poly":
        s.ClearField("power")
    for key, value in (overrides or {}).items():
        apply_override(s, key, value)
    return s


def apply_override(solver: pb.SolverParameter, key: str, value: str) -> None:
    field = solver.DESCRIPTOR.fields_by_name.get(key)
    if field is None:
        raise UserError(f"--solver-set {key}={value}: SolverParameter has no field '{key}'")
    if field.message_type is not None:
        raise UserError(f"--solver-set {key}: '{key}' is a message; edit the solver.prototxt instead")
    if field.is_repeated:
        solver.ClearField(key)
    text = value
    if field.type == field.TYPE_STRING and not (value.startswith('"') and value.endswith('"')):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    try:
        for item in text.split(",") if field.is_repeated else [text]:
            text_format.Merge(f"{key}: {item}", solver)
    except text_format.ParseError as exc:
        raise UserError(f"--solver-set {key}={value}: {exc}") from None
