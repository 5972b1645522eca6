"""Stopping `train` on SIGTERM or SIGINT without losing the work done: Kubernetes sends SIGTERM to a pod it
stops (preemption, a drained node, a deleted Job), and `finetune run` forwards SIGTERM or Ctrl-C.

Before training begins there is nothing to save: the signal ends the command at once (exit 128 + signal).
Once it has begun, the signal only asks the loop to stop: at the end of the current optimizer step the
Trainer saves a checkpoint (`StagingCheckpoints` uploads it, its COMPLETE marker last) and leaves the loop,
and `train` exits 128 + signal (143 for SIGTERM, 130 for SIGINT), so the run is not taken for finished and
the next `train` of the same run resumes from that checkpoint. Further signals while saving are ignored:
whoever sent them decides how long to wait before SIGKILL (the pod's grace period, `finetune run`'s).

Under torchrun every rank is signalled, not necessarily before the same step: the ranks agree (a MAX
all-reduce each step) so that all of them save and stop at the same step.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal(TrainerCallback):
    """Installs the handlers when created; `signum` is the signal that stopped training, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.training = False
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.training:
            raise SystemExit(128 + signum)
        if self.signum is None:
            print(f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step", flush=True)
            self.signum = signum

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.training = True

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
        signum = _agreed(self.signum, args)
        if signum is not None:
            self.signum = self.signum or signum
            control.should_save = True
            control.should_training_stop = True
        return control

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum


def _agreed(signum: int | None, args: Any) -> int | None:
    """The signal any rank received (SIGTERM for a rank that heard none itself); `signum` alone when the
    run is a single process."""
    import torch.distributed as dist  # noqa: PLC0415

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    import torch  # noqa: PLC0415

    flag = torch.tensor([signum or 0], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    received = int(flag.item())
    return signum or (signal.SIGTERM if received else None)
