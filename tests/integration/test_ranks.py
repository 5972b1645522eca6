"""`python -m finetune_trainer train` under `torchrun --nproc-per-node 2` on CPU (gloo): the pod's scratch
is written by local rank 0 alone (one download of the base model), and two
ranks that share a global batch train the same weights as one process; a failing or silent local rank 0
fails the other ranks instead of leaving them waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.datagen import preference_rows
from helpers.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from helpers.s3server import client as s3_client
from helpers.trainrun import ENV, contract, run_to_end

CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two ranks on two cores; the single process gets the same


def torchrun(config: Path, workdir: Path) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "finetune_trainer", "train", "--config", str(config), "--workdir", str(workdir)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **ENV, **CREDENTIALS, **ONE_THREAD},
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def upload(s3: S3Server, model: Path) -> str:
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3.endpoint)
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"tiny/{path.relative_to(model)}", Body=path.read_bytes())
    return f"s3://{bucket}/tiny/"


def test_two_ranks_write_scratch_once_and_train_like_one_process(
    s3: S3Server, tiny: Path, tmp_path: Path
) -> None:
    base = upload(s3, tiny)
    checkpoints = {}
    for name in ("single", "ranks"):
        staging = tmp_path / name / "staging"
        staging.mkdir(parents=True)
        # 16 rows, a global batch of 4: 4 steps; no dropout, so the only difference is how batches split
        config = contract(
            tmp_path / name,
            tiny,
            f"{staging}/",
            rows=16,
            epochs=1,
            endpoint=s3.endpoint,
            validation=False,
            save_steps=4,
            spec={"baseModel": {"uri": base}, "adapter": {"type": "lora", "dropout": 0}},
        )
        if name == "single":
            output = run_to_end(config, tmp_path / name / "work", {**CREDENTIALS, **ONE_THREAD})
        else:
            output = torchrun(config, tmp_path / name / "work")
        assert output.count(f"downloading {base}") == 1, output
        assert output.count("training complete at step 4") == (1 if name == "single" else 2), output
        checkpoints[name] = staging / "checkpoints" / "step-000000004"

    one, two = (load_file(checkpoints[n] / "adapter_model.safetensors") for n in ("single", "ranks"))
    assert one.keys() == two.keys()
    for key in one:  # the same global batch each step: DDP's averaged gradient is one process's gradient
        assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-6), key
    losses = {n: logged_losses(c / "trainer_state.json") for n, c in checkpoints.items()}
    assert losses["single"], losses
    assert torch.allclose(torch.tensor(losses["single"]), torch.tensor(losses["ranks"]), rtol=1e-4), losses
    assert not list((tmp_path / "ranks" / "work").rglob(".*partial*"))


def logged_losses(state: Path) -> list[float]:
    return [e["loss"] for e in json.loads(state.read_text())["log_history"] if "loss" in e]


def test_two_ranks_train_dpo_like_one_process(tiny: Path, tmp_path: Path) -> None:
    """DPO scores every pair with the reference once, when the trainer is built: under torchrun each rank
    scores its share of the batches and every rank gathers all the scores (none reads a file another rank
    wrote), so two ranks train the adapter, and log the losses and the validation loss, of one process."""
    checkpoints = {}
    for name in ("single", "ranks"):
        staging = tmp_path / name / "staging"
        staging.mkdir(parents=True)
        # 16 pairs, a global batch of 4: 4 steps; the reference scores them in 8 batches of 2, and the 4
        # validation pairs in 2, each rank every other batch (rows that do not divide among the ranks make
        # one rank repeat a row, in training and in evaluation alike, so neither would match one process)
        config = contract(
            tmp_path / name,
            tiny,
            f"{staging}/",
            method="dpo",
            fmt="preference",
            train_rows=preference_rows(16, seed=3),
            val_rows=preference_rows(4, seed=4),
            epochs=1,
            save_steps=4,
            spec={"adapter": {"type": "lora", "dropout": 0}, "dpo": {"beta": 0.1}},
        )
        if name == "single":
            output = run_to_end(config, tmp_path / name / "work", ONE_THREAD)
        else:
            output = torchrun(config, tmp_path / name / "work")
        assert output.count("training complete at step 4") == (1 if name == "single" else 2), output
        checkpoints[name] = staging / "checkpoints" / "step-000000004"

    one, two = (load_file(checkpoints[n] / "adapter_model.safetensors") for n in ("single", "ranks"))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-6), key
    for logged in ("loss", "eval_loss"):
        values = {n: logged_values(c / "trainer_state.json", logged) for n, c in checkpoints.items()}
        assert values["single"], values
        assert torch.allclose(torch.tensor(values["single"]), torch.tensor(values["ranks"]), rtol=1e-4), (
            values
        )


def logged_values(state: Path, key: str) -> list[float]:
    return [e[key] for e in json.loads(state.read_text())["log_history"] if key in e]


RANKS = """
import sys, time
from finetune_trainer import ranks
ranks.start()
def work():
    if {behaviour!r} == "fail":
        raise OSError("the bucket is gone")
    time.sleep(8)
try:
    ranks.local_zero_first("download the base model", work)
except (ranks.RankError, OSError) as err:
    print(f"rank {{ranks.rank()}}: {{err}}", file=sys.stderr)
    sys.exit(1)
"""


def _two_ranks(behaviour: str, wait: str) -> list[tuple[int, str]]:
    """Two processes in one pod's process group (as torchrun starts them); local rank 0 fails or hangs."""
    script = textwrap.dedent(RANKS.format(behaviour=behaviour))
    port = str(29_600 + uuid.uuid4().int % 300)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                **ENV,
                **ONE_THREAD,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "FINETUNE_RANK_WAIT_SECONDS": wait,
            },
        )
        for r in range(2)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=60)
        results.append((process.returncode, output))
    return results


def test_a_failing_local_rank_zero_fails_the_other_ranks() -> None:
    (rc0, out0), (rc1, out1) = _two_ranks("fail", "60")
    assert rc0 == 1, out0
    assert "rank 0: the bucket is gone" in out0, out0
    assert rc1 == 1, out1
    assert "rank 1: download the base model failed on rank 0: OSError: the bucket is gone" in out1, out1


def test_a_silent_local_rank_zero_fails_the_other_ranks_at_the_timeout() -> None:
    (_, _), (rc1, out1) = _two_ranks("hang", "3")
    assert rc1 == 1, out1
    assert "heard from no local rank 0 within 3s" in out1, out1
