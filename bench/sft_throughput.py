"""SFT tokens/s of the project's trainer against plain TRL, on CPU (not a test: `make bench`).

Both runs train the same model (the bundled SmolLM2-135M-Instruct), on the same rows (the bundled
order-json training set), with the same LoRA (r 16, alpha 32, dropout 0.05, all-linear), batch size and
max length, for the same number of optimizer steps; the first steps are warm-up, left out of the timing.

- plain: `trl.SFTTrainer` given the raw `messages` rows, with its defaults except what anyone training on
  a CPU sets (use_cpu, bf16 off, activation checkpointing off, report_to none) and the shared settings
  above. It pads every batch to its longest row and learns from every token.
- ours: `finetune_trainer.methods.sft.build` on a `Run` made from the quickstart manifest with
  `packing: true` (rows packed into max-length windows, padding-free, loss on the assistant turns).

Tokens/s counts the real tokens fed to the model (pads left out), as the data collator hands them over;
each run is its own process, so its peak RSS is its own. The ratio ours/plain is the aim (1.3x or better).

    python bench/sft_throughput.py [--steps 8] [--warmup 2] [--batch-size 8] [--max-length 256] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

import yaml  # noqa: E402

from finetune_trainer import builtin  # noqa: E402

MODEL = "builtin://models/smollm2-135m-instruct"
DATA = "builtin://datasets/order-json/training.jsonl"
AIM = 1.3
ENV = {"HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


class TokenCounter:
    """Wraps a data collator: counts the real tokens of every batch it builds (the attention mask's ones,
    or every token of a padding-free batch, which has no pads)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.tokens = 0

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        batch = self.collator(examples)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collator, name)


def meter(counter: TokenCounter, warmup: int, steps: int) -> Any:
    """A callback that notes time and tokens after the warm-up steps and after the last, then stops."""
    from transformers import TrainerCallback  # noqa: PLC0415

    class Meter(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.marks: dict[int, tuple[float, int]] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step in (warmup, warmup + steps):
                self.marks[state.global_step] = (time.perf_counter(), counter.tokens)
            if state.global_step >= warmup + steps:
                control.should_training_stop = True
            return control

    return Meter()


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
        num_train_epochs=100,  # the meter stops the run
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
    )
    return SFTTrainer(
        model=str(model_dir),
        args=config,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in rows]),
        peft_config=peft_config(Adapter.model_validate({"type": "lora", "rank": 16})),
    )


def ours(model_dir: Path, rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> Any:
    from finetune_api.hyperparameters import Resolved  # noqa: PLC0415
    from finetune_api.trainer_config import build_trainer_config  # noqa: PLC0415
    from finetune_api.v1alpha1 import FineTuneJob  # noqa: PLC0415
    from finetune_trainer.data.rows import read_jsonl  # noqa: PLC0415
    from finetune_trainer.methods import Run, sft  # noqa: PLC0415

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["metadata"] |= {"namespace": "bench", "uid": "00000000-0000-0000-0000-000000000000"}
    spec = doc["spec"]
    hp = {"packing": True, "maxSeqLength": args.max_length, "batchSize": args.batch_size}
    spec["hyperparameters"] |= hp
    spec["checkpointing"]["saveSteps"] = 1_000_000  # no checkpoint inside the timed steps
    job = FineTuneJob.model_validate(doc)
    hp = spec["hyperparameters"]
    resolved = Resolved(epochs=100, batch_size=hp["batchSize"], learning_rate=hp["learningRate"])
    config = build_trainer_config(job, run_id="bench", resolved=resolved)
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
        build = {"plain": plain, "ours": ours}[args.worker]
        trainer = build(Path(args.model_dir), rows, args, Path(out))
        counter = TokenCounter(trainer.data_collator)
        trainer.data_collator = counter
        metered = meter(counter, args.warmup, args.steps)
        trainer.add_callback(metered)
        trainer.train()
    marks = metered.marks
    if len(marks) < 2:
        raise RuntimeError(f"the run ended after {trainer.state.global_step} steps, before the last mark")
    (t0, n0), (t1, n1) = marks[args.warmup], marks[args.warmup + args.steps]
    result = {
        "tokens": n1 - n0,
        "seconds": t1 - t0,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model": f"{trainer.model.dtype} {trainer.model.config._attn_implementation}",
    }
    print(json.dumps(result), flush=True)


def measure(which: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", which, "--model-dir", str(model_dir)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    env = {**ENV, **os.environ}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {which} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before the timing starts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; the best counts")
    parser.add_argument("--quick", action="store_true", help="1 warm-up step and 3 timed steps")
    parser.add_argument("--worker", choices=("plain", "ours"), help=argparse.SUPPRESS)
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
    results: dict[str, list[dict[str, Any]]] = {"plain": [], "ours": []}
    for _ in range(args.repeats):
        for which in ("plain", "ours"):
            results[which].append(measure(which, model_dir, args))
    print(f"\n{'run':<8} {'tokens':>8} {'seconds':>8} {'s/step':>7} {'tokens/s':>9} {'peak RSS':>9}")
    best = {}
    for which, runs in results.items():
        for r in runs:
            rate = r["tokens"] / r["seconds"]
            print(
                f"{which:<8} {r['tokens']:8,} {r['seconds']:8.1f} {r['seconds'] / r['steps']:7.2f} "
                f"{rate:9.1f} {r['peak_rss_mib']:6.0f} MiB"
            )
        best[which] = max(r["tokens"] / r["seconds"] for r in runs)
    ratio = best["ours"] / best["plain"]
    first = results["ours"][0]
    print(
        f"\ntokens per step: plain {results['plain'][0]['tokens'] / args.steps:,.0f}, ours "
        f"{first['tokens'] / args.steps:,.0f} (torch threads: {first['threads']})"
    )
    print(f"ratio ours/plain: {ratio:.2f}x (aim >= {AIM}x): {'met' if ratio >= AIM else 'NOT met'}")


if __name__ == "__main__":
    main()
