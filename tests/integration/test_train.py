"""`python -m finetune_trainer train` on tiny models: it trains, checkpoints to staging (S3 or local) with
the marker last, reports progress, and resumes after a SIGKILL from the last complete checkpoint."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

from safetensors.torch import load_file

from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client
from helpers.trainrun import contract, train


def test_lora_sft_trains_and_checkpoints_to_s3(s3: S3Server, tiny: Path, tmp_path: Path) -> None:
    bucket = f"staging-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3.endpoint)
    client.create_bucket(Bucket=bucket)
    staging = f"s3://{bucket}/test/tiny/tiny-1/"
    config = contract(tmp_path, tiny, staging, endpoint=s3.endpoint)
    process = train(
        config, tmp_path / "work", {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output

    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    root = "test/tiny/tiny-1/"
    markers = {
        k.split("/")[-2]: json.loads(client.get_object(Bucket=bucket, Key=k)["Body"].read())
        for k in keys
        if k.endswith("/COMPLETE")
    }
    # 32 rows / 4 x 2 epochs = 16 steps, saved every 2: the last two stay, and the best by eval loss
    best = min(markers.values(), key=lambda m: (m["metrics"]["eval_loss"], -m["step"]))
    assert set(markers) == {"step-000000014", "step-000000016", f"step-{best['step']:09d}"}
    assert all(not k.startswith(f"{root}checkpoints/step-000000002/") for k in keys)  # pruned whole
    last = f"{root}checkpoints/step-000000016/"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "trainer_state.json",
        "finetune/contract.json",
        "finetune/datasets.json",
        "finetune/versions.json",
    ):
        assert last + name in keys, name
    assert markers["step-000000016"]["step"] == 16
    datasets = json.loads(
        client.get_object(Bucket=bucket, Key=last + "finetune/datasets.json")["Body"].read()
    )
    assert datasets["training"]["rows"] == 32
    assert len(datasets["training"]["sha256"]) == 64
    progress = json.loads(client.get_object(Bucket=bucket, Key=root + "progress.json")["Body"].read())
    assert progress["step"] == progress["totalSteps"] == 16
    assert progress["loss"] is not None

    weights = tmp_path / "adapter.safetensors"
    weights.write_bytes(
        client.get_object(Bucket=bucket, Key=last + "adapter_model.safetensors")["Body"].read()
    )
    lora_b = [t for name, t in load_file(weights).items() if "lora_B" in name]
    assert lora_b
    assert all(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: every adapter learned


def test_full_fine_tuning_changes_the_weights(tiny: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    config = contract(
        tmp_path, tiny, f"{staging}/", adapter="full", save_steps=100, epochs=1, validation=False
    )
    process = train(config, tmp_path / "work")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    (final,) = staging.glob("checkpoints/*/COMPLETE")  # only the last step saves: the model is a checkpoint
    assert final.parent.name == "step-000000008"
    base, trained = load_file(tiny / "model.safetensors"), load_file(final.parent / "model.safetensors")
    changed = [name for name in base if not (base[name] == trained[name]).all()]
    assert len(changed) > len(base) // 2


def test_sigkill_resumes_from_the_last_complete_checkpoint(tiny: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    checkpoints = staging / "checkpoints"
    config = contract(tmp_path, tiny, f"{staging}/", rows=160, epochs=3, save_steps=5, validation=False)
    total = 160 // 4 * 3
    first = train(config, tmp_path / "work")
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("*/COMPLETE")):
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    done = sorted(int(p.parent.name.removeprefix("step-")) for p in checkpoints.glob("*/COMPLETE"))
    assert done[-1] < total
    partial = checkpoints / "step-000000099"  # a save cut short: files, no marker
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"torn")

    second = train(config, tmp_path / "work2")
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert f"resuming from step {done[-1]}" in output
    assert f"training complete at step {total}" in output
    progress = json.loads((staging / "progress.json").read_text())
    assert progress["step"] == progress["totalSteps"] == total
    state = json.loads((checkpoints / f"step-{total:09d}" / "trainer_state.json").read_text())
    assert state["global_step"] == total
    assert not (partial / "COMPLETE").exists()


def test_without_a_validation_file_held_out_rows_stop_a_run_that_stopped_learning(
    tiny: Path, tmp_path: Path
) -> None:
    # random words: after a few steps at this learning rate the held-out loss has nothing more to gain
    staging = tmp_path / "staging"
    config = contract(
        tmp_path,
        tiny,
        f"{staging}/",
        rows=96,
        epochs=8,
        learning_rate=2e-2,
        save_steps=None,
        validation=False,
        spec={"earlyStopping": {}},
    )
    output = train(config, tmp_path / "work").communicate(timeout=300)[0]
    assert "8 of 96 training rows held out to watch (seed" in output, output
    total = 88 // 4 * 8  # the 88 rows trained on, batch 4, 8 epochs
    assert "stopped early at step " in output, output
    progress = json.loads((staging / "progress.json").read_text())
    assert progress["totalSteps"] == total
    assert progress["step"] < total
    assert progress["stoppedEarly"].startswith(
        f"stopped early at step {progress['step']} of {total}: held-out loss"
    )
    marker = json.loads((staging / "checkpoints" / f"step-{progress['step']:09d}" / "COMPLETE").read_text())
    assert marker["stoppedEarly"] == progress["stoppedEarly"]
    assert f"training complete at step {progress['step']}" in output
