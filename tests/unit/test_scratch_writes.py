"""Scratch writes are whole or absent: files through a temporary name renamed into place, a restored
checkpoint renamed in only when complete; in one process `ranks` just runs the work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from finetune_api.run_layout import COMPLETE_MARKER, StagingLayout
from finetune_trainer import ranks
from finetune_trainer.checkpoints import restore
from finetune_trainer.storage import Store, replace_file


def test_replace_file_never_leaves_a_half_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "weights.bin"
    replace_file(target, b"old")

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        replace_file(target, b"new and longer")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["weights.bin"]  # the temporary is gone too


def test_restore_replaces_a_stale_local_checkpoint_whole(tmp_path: Path) -> None:
    layout = StagingLayout(f"{tmp_path}/staging/")
    store = Store()
    prefix = layout.checkpoint(4)
    for name, data in {"adapter_model.safetensors": b"w", "finetune/contract.json": b"{}"}.items():
        store.write_bytes(f"{prefix}/{name}", data)
    store.write_bytes(f"{prefix}/{COMPLETE_MARKER}", b"{}")
    output = tmp_path / "work" / "checkpoints"
    stale = output / "checkpoint-4"
    stale.mkdir(parents=True)
    (stale / "half-written").write_bytes(b"x")

    local = restore(store, layout, 4, output)

    assert local == stale
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert files == ["adapter_model.safetensors", "finetune/contract.json"]
    assert sorted(os.listdir(output)) == ["checkpoint-4"]  # no partial folder left beside it


def test_one_process_runs_the_work_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks.start()
    assert ranks.local_zero_first("count", lambda: 42) == 42
    with pytest.raises(ValueError, match="bad"):
        ranks.local_zero_first("fail", lambda: (_ for _ in ()).throw(ValueError("bad")))
