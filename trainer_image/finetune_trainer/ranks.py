"""The processes of one training run under torchrun, and who among them writes the pod's scratch.

torchrun starts one process per GPU (WORLD_SIZE, RANK, LOCAL_RANK from the environment), and all the
processes of a pod share its scratch folder. What goes into scratch before training (the base model
downloaded or converted, the checkpoint restored) is written by the pod's local rank 0 alone; the other
ranks wait for it and use the folder it reports. Storage (checkpoints, progress) is written by global
rank 0 alone, in the callbacks (`state.is_world_process_zero`).

`start` creates the default process group early, the way the Trainer would (accelerate's `PartialState`,
which the Trainer then finds and reuses), because the waiting has to happen before the Trainer exists.
The waits go over a separate gloo group with its own timeout (`$FINETUNE_RANK_WAIT_SECONDS`, default one
hour: a large model's download), so they work the same over NCCL pods and CPU tests. A local rank 0
that fails tells every rank; a rank that disappears or never answers makes the others fail at the
timeout; no rank waits forever.

Single process (WORLD_SIZE unset or 1): nothing is started and `local_zero_first` just runs the work.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")
WAIT_ENV = "FINETUNE_RANK_WAIT_SECONDS"
DEFAULT_WAIT_SECONDS = 3600
DDP_TIMEOUT_SECONDS = 1800  # TrainingArguments.ddp_timeout's default: the training collectives' limit

_group: Any = None


class RankError(RuntimeError):
    pass


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def wait_seconds() -> float:
    return float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_SECONDS)


def start() -> None:
    """Join the run's process group (once per process; nothing in a single process)."""
    global _group  # noqa: PLW0603 (one group per process, made once)
    if world_size() <= 1 or _group is not None:
        return
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    from accelerate import PartialState  # type: ignore[import-untyped]  # noqa: PLC0415

    try:  # as TrainingArguments would: NCCL on GPUs, gloo on CPUs (`use_cpu`, Run.common_args)
        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=DDP_TIMEOUT_SECONDS))
        if not dist.is_initialized():
            raise RankError(f"WORLD_SIZE is {world_size()} but no process group was started")
        _group = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait_seconds()))
    except (RuntimeError, ValueError) as err:
        raise RankError(f"rank {rank()} could not join the process group: {err}") from err
    atexit.register(_leave)


def _leave() -> None:
    """Destroy the process groups before the interpreter's teardown: left to it, gloo's threads abort the
    process (SIGABRT, "terminate called without an active exception") when a peer has already gone, and
    the exit code a failing rank chose is lost."""
    import torch.distributed as dist  # noqa: PLC0415

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except (RuntimeError, ValueError):
        pass  # exiting anyway


def local_zero_first(what: str, work: Callable[[], T]) -> T:
    """`work()` on each pod's local rank 0 only; every rank returns the result of its pod's local rank 0.

    All ranks must call this at the same point. When a local rank 0 fails, that rank re-raises its own
    error and every other rank raises `RankError` naming it; a rank that does not answer within
    `wait_seconds()` makes the others raise `RankError` too."""
    if _group is None:
        return work()
    import torch.distributed as dist  # noqa: PLC0415

    result: Any = None
    error: str | None = None
    raised: BaseException | None = None
    if local_rank() == 0:
        try:
            result = work()
        except Exception as err:  # every rank must hear of it, then it is raised again below
            raised, error = err, f"{type(err).__name__}: {err}"
    reports: list[Any] = [None] * world_size()
    try:
        dist.all_gather_object(reports, (rank(), local_rank(), error, result), group=_group)
    except RuntimeError as err:
        raise RankError(
            f"{what}: rank {rank()} heard from no local rank 0 within {wait_seconds():.0f}s "
            f"(${WAIT_ENV}), or a rank exited: {err}"
        ) from err
    if raised is not None:
        raise raised
    failed = [(r, e) for r, _, e, _ in reports if e is not None]
    if failed:
        r, e = failed[0]
        raise RankError(f"{what} failed on rank {r}: {e}")
    leader = rank() - local_rank()  # torchrun numbers a pod's ranks consecutively from its local rank 0
    return next(res for r, _, _, res in reports if r == leader)  # type: ignore[no-any-return]
