"""SFT tokens/s of the project's trainer against plain TRL, on CPU (not a test: `make bench`).

Both runs train the same model (the bundled SmolLM2-135M-Instruct), on the same rows (the bundled
order-json training set), with the same LoRA (r 16, alpha 32, dropout 0.05, all-linear), batch size and
max length, for the same number of optimizer steps; the first steps are warm-up, left out of the timing.

- plain: `trl.SFTTrainer` given the raw `messages` rows, with its defaults except what anyone training on
  a CPU sets (use_cpu, bf16 off, activation checkpointing off, report_to none) and the shared settings
  above. It pads every batch to its longest row and learns from every token; its LM head projects every
  position (TRL projects only labelled ones on Triton devices, never on a CPU).
- ours: `finetune_trainer.methods.sft.build` on a `Run` made from the quickstart manifest with
  `packing: true`: rows packed into max-length windows, padding-free, each row attending only to itself
  (`finetune_trainer.attention`), loss on the assistant turns, and the LM head projecting only those
  (`finetune_trainer.lm_head`).

Tokens/s counts the real tokens of the batches trained on in the timed steps (pads left out); each run is
its own process, so its peak RSS is its own. The ratio ours/plain is the aim (1.8x or better). Tokens per
CPU-second (the process's CPU time, all threads) is printed too, with the cores' worth of CPU time each
run got: on a machine shared with other work it varies less than wall time.

`--unpacked` adds a third run, ours with packing off (padded batches, the LM head still on learned positions
only), which separates what packing does from the rest. The `learned` column is the share of the tokens
trained on that carry a label.

    python bench/sft_throughput.py [--steps 8] [--warmup 2] [--batch-size 8] [--max-length 256]
                                   [--repeats 1] [--unpacked] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

import yaml  # noqa: E402
from trainer_runs import CPU_TRAINING, in_own_process, meter, timed_span  # noqa: E402

from finetune_trainer import builtin  # noqa: E402

MODEL = "builtin://models/smollm2-135m-instruct"
DATA = "builtin://datasets/order-json/training.jsonl"
AIM = 1.8
RUNS = ("plain", "ours", "ours-unpacked")


class TokenCounter:
    """Wraps a trainer's `training_step`: counts the real tokens of every batch it trains on (the attention
    mask's ones, or every token of a padding-free batch, which has no pads), every token fed, and the
    tokens with a label."""

    def __init__(self, trainer: Any) -> None:
        self.training_step = trainer.training_step
        trainer.training_step = self
        self.tokens = 0
        self.fed = 0
        self.learned = 0

    def __call__(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        fed = int(inputs["input_ids"].numel())
        mask = inputs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else fed
        self.fed += fed
        self.learned += int((inputs["labels"] != -100).sum())
        return self.training_step(model, inputs, *args, **kwargs)


def plain(model_dir: Path, rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> Any:
    import torch  # noqa: PLC0415
    from datasets import Dataset  # noqa: PLC0415
    from trl import SFTConfig, SFTTrainer  # noqa: PLC0415

    from finetune_api.v1alpha1.finetunejob import Adapter  # noqa: PLC0415
    from finetune_trainer.models import peft_config  # noqa: PLC0415

    torch.manual_seed(0)
    config = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        **CPU_TRAINING,
    )
    return SFTTrainer(
        model=str(model_dir),
        args=config,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in rows]),
        peft_config=peft_config(Adapter.model_validate({"type": "lora", "rank": 16})),
    )


def ours(
    model_dir: Path, rows: list[dict[str, Any]], args: argparse.Namespace, out: Path, packing: bool = True
) -> Any:
    from finetune_api.hyperparameters import Resolved  # noqa: PLC0415
    from finetune_api.plan import RunPlan  # noqa: PLC0415
    from finetune_api.v1alpha1 import FineTuneJob  # noqa: PLC0415
    from finetune_trainer.data.rows import read_jsonl  # noqa: PLC0415
    from finetune_trainer.methods import Run, sft  # noqa: PLC0415

    documents = yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text())
    doc = next(d for d in documents if d["kind"] == "FineTuneJob")
    doc["spec"].pop("evalGateRef", None)  # training only
    doc["spec"].pop("outputUri", None)
    doc["spec"].pop("deployment", None)
    doc["metadata"] |= {"namespace": "bench", "uid": "00000000-0000-0000-0000-000000000000"}
    spec = doc["spec"]
    hp = spec["hyperparameters"]
    hp |= {"packing": packing, "maxSeqLength": args.max_length, "batchSize": args.batch_size}
    spec["checkpointing"]["saveSteps"] = 1_000_000  # no checkpoint inside the timed steps
    job = FineTuneJob.model_validate(doc)
    resolved = Resolved(epochs=100, batch_size=hp["batchSize"], learning_rate=hp["learningRate"])
    config = RunPlan.of(job, run="bench").train_contract(resolved)
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    dataset = read_jsonl(DATA, content)
    if dataset.problems:
        raise ValueError(f"{DATA}: {dataset.problems[0]}")
    run = Run(config, model_dir, out, train_rows=dataset.rows, eval_rows=[], gpu=False)
    return sft.build(run)


def worker(args: argparse.Namespace) -> None:
    """One run in this process; prints its measurements as one JSON line."""
    import torch  # noqa: PLC0415

    rows = [json.loads(line) for line in builtin.resolve(DATA).read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as out:
        model_dir, where = Path(args.model_dir), Path(out)
        if args.worker == "plain":
            trainer = plain(model_dir, rows, args, where)
        else:
            trainer = ours(model_dir, rows, args, where, packing=args.worker == "ours")
        counter = TokenCounter(trainer)
        metered = meter(lambda: (counter.tokens, counter.fed, counter.learned), args.warmup, args.steps)
        trainer.add_callback(metered)
        trainer.train()
    (t0, c0, n0, f0, l0), (t1, c1, n1, f1, l1) = timed_span(metered, trainer, args.warmup, args.steps)
    result = {
        "tokens": n1 - n0,
        "fed": f1 - f0,
        "learned": l1 - l0,
        "seconds": t1 - t0,
        "cpu_seconds": c1 - c0,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model": f"{trainer.model.dtype} {trainer.model.config._attn_implementation}",
    }
    print(json.dumps(result), flush=True)


def measure(which: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    flags += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    return in_own_process(__file__, which, model_dir, flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before the timing starts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; the best counts")
    parser.add_argument("--quick", action="store_true", help="1 warm-up step and 3 timed steps")
    parser.add_argument(
        "--unpacked", action="store_true", help="also run ours with packing off, to isolate what packing does"
    )
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps = 1, 3
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--steps, --warmup, --batch-size and --repeats must be at least 1")
    if not 16 <= args.max_length <= 262_144:
        parser.error("--max-length must be in [16, 262144] (hyperparameters.maxSeqLength)")
    if args.worker:
        worker(args)
        return

    model_dir = builtin.resolve(MODEL)  # converted from GGUF once, then cached
    print(
        f"SFT on CPU: {MODEL}, LoRA r16 all-linear, {DATA}, batch {args.batch_size}, max length "
        f"{args.max_length}, {args.warmup} warm-up + {args.steps} timed optimizer steps"
    )
    runs = RUNS if args.unpacked else RUNS[:2]
    results: dict[str, list[dict[str, Any]]] = {which: [] for which in runs}
    for _ in range(args.repeats):
        for which in runs:
            results[which].append(measure(which, model_dir, args))
    print(
        f"\n{'run':<14} {'tokens':>7} {'tokens/step':>11} {'padding':>7} {'learned':>7} {'s/step':>7} "
        f"{'cores':>5} {'tokens/s':>8} {'tokens/CPU-s':>12} {'peak RSS':>9}"
    )
    best: dict[str, tuple[float, float]] = {}
    cores: list[float] = []
    for which, measured in results.items():
        for r in measured:
            tokens, steps, seconds = r["tokens"], r["steps"], r["seconds"]
            cores.append(r["cpu_seconds"] / seconds)
            print(
                f"{which:<14} {tokens:7,} {tokens / steps:11,.0f} {1 - tokens / r['fed']:7.1%} "
                f"{r['learned'] / tokens:7.1%} {seconds / steps:7.2f} {cores[-1]:5.2f} "
                f"{tokens / seconds:8.1f} {tokens / r['cpu_seconds']:12.1f} {r['peak_rss_mib']:5.0f} MiB"
            )
        best[which] = (
            max(r["tokens"] / r["seconds"] for r in measured),
            max(r["tokens"] / r["cpu_seconds"] for r in measured),
        )
    first = results["ours"][0]
    print(f"(model {first['model']}, torch threads {first['threads']}; the best of {args.repeats} counts)")
    if max(cores) > 1.2 * min(cores):
        print(
            f"the runs had {min(cores):.2f} to {max(cores):.2f} cores' worth of CPU time: the machine is "
            "shared, so compare tokens per CPU-second rather than per second"
        )
    for which in runs[1:]:
        ratio = best[which][0] / best["plain"][0]
        aim = f" (aim >= {AIM}x): {'met' if ratio >= AIM else 'NOT met'}" if which == "ours" else ""
        cpu = best[which][1] / best["plain"][1]
        print(f"ratio {which}/plain: {ratio:.2f}x{aim}; per CPU-second {cpu:.2f}x")


if __name__ == "__main__":
    main()
