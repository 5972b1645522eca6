"""DPO pairs/s of the project's trainer against plain TRL, on CPU (not a test: `make bench`).

Both runs train the same model (the bundled SmolLM2-135M-Instruct), on the same preference pairs, with the
same LoRA (r 16, alpha 32, dropout 0.05, all-linear), batch size and max length, for the same number of
optimizer steps; the first steps are warm-up, left out of the timing. The pairs are made here from the
bundled order-json training rows: the prompt is the row's system and user turns, the preferred reply its
JSON answer, the non-preferred one a corrupted answer (in turn: a quantity off by one, the JSON wrapped in
prose, the quantity as a string), as a preference set for that task would hold.

- plain: `trl.DPOTrainer` given those rows as conversational prompt/chosen/rejected, with its defaults
  except what anyone training on a CPU sets (use_cpu, bf16 off, activation checkpointing off, report_to
  none) and the shared settings above. Every step runs the reference (the base, adapter disabled) forward
  on the chosen and rejected sequences again, and its LM head projects every position.
- ours: `finetune_trainer.methods.dpo.build` on a `Run` made from the quickstart manifest turned to
  `method: dpo` (beta 0.1, sigmoid, as examples/dpo-helpfulness.yaml): the reference scores every pair once
  when the trainer is built, steps run the policy alone, and the LM head projects only response positions.

That one reference pass is ours' up-front cost, outside the timed steps: it is timed on its own, and the
ratio is given twice, per step, and for one epoch over the pairs with that pass counted in (each later
epoch gains the per-step ratio). Pairs/s counts the pairs of the timed steps; tokens/s the real tokens of
the chosen and rejected sequences the policy was fed (pads left out), `learned` the share of them in the
responses. Each run is its own process, so its peak RSS is its own. Per CPU-second figures (the process's
CPU time, all threads) are printed too, with the cores' worth of CPU time each run got: on a machine
shared with other work they vary less than wall time.

`--per-step-reference` adds a third run, ours with the reference forward in every step (TRL's default),
which separates what scoring once does from what the LM head does.

    python bench/dpo_throughput.py [--steps 8] [--warmup 2] [--batch-size 8] [--max-length 256]
                                   [--pairs 96] [--repeats 1] [--per-step-reference] [--quick]

`--quick` trains 32 pairs, 1 warm-up step and 3 timed steps: one epoch.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

import yaml  # noqa: E402
from trainer_runs import CPU_TRAINING, in_own_process, meter, timed_span  # noqa: E402

from finetune_trainer import builtin  # noqa: E402

MODEL = "builtin://models/smollm2-135m-instruct"
DATA = "builtin://datasets/order-json/training.jsonl"
ROWS = 96  # order-json training rows
RUNS = ("plain", "ours", "ours-per-step")


def corrupted(answer: str, index: int) -> str:
    """A wrong reply to an order: the quantity off by one, the JSON wrapped in prose, or the quantity as a
    string, in turn."""
    order = json.loads(answer)
    if index % 3 == 0:
        return json.dumps(order | {"quantity": order["quantity"] + 1})
    if index % 3 == 1:
        return f"Sure! Here is the order as JSON: {answer} Let me know if you need anything else."
    return json.dumps(order | {"quantity": str(order["quantity"])})


def preference_rows(count: int) -> list[dict[str, Any]]:
    """The first `count` order-json training rows as OpenAI preference rows."""
    rows = []
    for index, line in enumerate(builtin.resolve(DATA).read_text().splitlines()[:count]):
        messages = json.loads(line)["messages"]
        answer = messages[-1]["content"]
        rows.append(
            {
                "input": {"messages": messages[:-1]},
                "preferred_output": [{"role": "assistant", "content": answer}],
                "non_preferred_output": [{"role": "assistant", "content": corrupted(answer, index)}],
            }
        )
    return rows


class TokenCounter:
    """Wraps a trainer's `training_step`: counts the pairs of every batch it trains on (its first half
    holds the chosen sequences, its second the rejected), their real tokens (the attention mask's ones)
    and their response tokens."""

    def __init__(self, trainer: Any) -> None:
        self.training_step = trainer.training_step
        trainer.training_step = self
        self.pairs = 0
        self.tokens = 0
        self.learned = 0

    def __call__(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.pairs += int(inputs["input_ids"].shape[0]) // 2
        self.tokens += int(inputs["attention_mask"].sum())
        self.learned += int(inputs["completion_mask"].sum())
        return self.training_step(model, inputs, *args, **kwargs)


def plain(model_dir: Path, rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> Any:
    import torch  # noqa: PLC0415
    from datasets import Dataset  # noqa: PLC0415
    from trl import DPOConfig, DPOTrainer  # noqa: PLC0415

    from finetune_api.v1alpha1.finetunejob import Adapter  # noqa: PLC0415
    from finetune_trainer.methods.dpo import preference  # noqa: PLC0415
    from finetune_trainer.models import peft_config  # noqa: PLC0415

    torch.manual_seed(0)
    config = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        **CPU_TRAINING,
    )
    return DPOTrainer(
        model=str(model_dir),
        args=config,
        train_dataset=Dataset.from_list([preference(r) for r in rows]),
        peft_config=peft_config(Adapter.model_validate({"type": "lora", "rank": 16})),
    )


def ours(
    model_dir: Path, rows: list[dict[str, Any]], args: argparse.Namespace, out: Path, once: bool = True
) -> Any:
    import torch  # noqa: PLC0415

    from finetune_api.hyperparameters import Resolved  # noqa: PLC0415
    from finetune_api.plan import RunPlan  # noqa: PLC0415
    from finetune_api.v1alpha1 import FineTuneJob  # noqa: PLC0415
    from finetune_trainer.data.rows import read_jsonl  # noqa: PLC0415
    from finetune_trainer.methods import Run, dpo  # noqa: PLC0415

    documents = yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text())
    doc = next(d for d in documents if d["kind"] == "FineTuneJob")
    for training_only in ("evalGateRef", "outputUri", "deployment"):
        doc["spec"].pop(training_only, None)
    doc["metadata"] |= {"namespace": "bench", "uid": "00000000-0000-0000-0000-000000000000"}
    spec = doc["spec"]
    spec["method"] = "dpo"
    spec["dpo"] = {"beta": 0.1, "lossType": "sigmoid"}
    spec["datasets"] = {"training": {"uri": "/data/order-json-preferences.jsonl", "format": "preference"}}
    hp = spec["hyperparameters"]
    hp |= {"maxSeqLength": args.max_length, "batchSize": args.batch_size}
    spec["checkpointing"]["saveSteps"] = 1_000_000  # no checkpoint inside the timed steps
    job = FineTuneJob.model_validate(doc)
    resolved = Resolved(epochs=100, batch_size=hp["batchSize"], learning_rate=hp["learningRate"])
    config = RunPlan.of(job, run="bench").train_contract(resolved)
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    dataset = read_jsonl("order-json-preferences.jsonl", content)
    if dataset.problems:
        raise ValueError(f"preference rows: {dataset.problems[0]}")
    run = Run(config, model_dir, out, train_rows=dataset.rows, eval_rows=[], gpu=False)
    score = dpo.ReferenceOnce._precompute_ref_logps
    reference: dict[str, float] = {}

    def timed(trainer: Any, rows: Any, name: str, batch_size: int) -> Any:
        clocks = (time.perf_counter(), time.process_time())
        scored = score(trainer, rows, name, batch_size)
        reference["seconds"] = time.perf_counter() - clocks[0]
        reference["cpu_seconds"] = time.process_time() - clocks[1]
        reference["pairs"] = len(scored)
        return scored

    torch.manual_seed(0)
    dpo.ReferenceOnce._precompute_ref_logps = timed  # type: ignore[method-assign]
    if not once:  # the reference forward in every step, as TRL's default
        config_class = dpo.DPOConfig
        dpo.DPOConfig = lambda **kw: config_class(**kw | {"precompute_ref_log_probs": False})
    trainer = dpo.build(run)
    trainer.bench_reference = reference
    return trainer


def worker(args: argparse.Namespace) -> None:
    """One run in this process; prints its measurements as one JSON line."""
    import torch  # noqa: PLC0415

    rows = preference_rows(args.pairs)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as out:
        model_dir, where = Path(args.model_dir), Path(out)
        if args.worker == "plain":
            trainer = plain(model_dir, rows, args, where)
        else:
            trainer = ours(model_dir, rows, args, where, once=args.worker == "ours")
        counter = TokenCounter(trainer)
        metered = meter(lambda: (counter.pairs, counter.tokens, counter.learned), args.warmup, args.steps)
        trainer.add_callback(metered)
        trainer.train()
    (t0, c0, p0, n0, l0), (t1, c1, p1, n1, l1) = timed_span(metered, trainer, args.warmup, args.steps)
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    result = {
        "pairs": p1 - p0,
        "tokens": n1 - n0,
        "learned": l1 - l0,
        "seconds": t1 - t0,
        "cpu_seconds": c1 - c0,
        "steps": args.steps,
        "rows": len(rows),
        "reference": getattr(trainer, "bench_reference", None),
        "threads": torch.get_num_threads(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model": f"{model.dtype} {model.config._attn_implementation}",
        "activation_checkpointing": bool(trainer.args.activation_checkpointing),
    }
    print(json.dumps(result), flush=True)


def measure(which: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    flags += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    flags += ["--pairs", str(args.pairs)]
    return in_own_process(__file__, which, model_dir, flags)


def epoch(r: dict[str, Any], clock: str) -> float:
    """Seconds for one epoch over the rows at the run's timed rate, with ours' reference pass counted in."""
    reference = r["reference"] or {}
    return r["rows"] * r[clock] / r["pairs"] + reference.get(clock, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before the timing starts")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=96, help=f"preference pairs, at most {ROWS}")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; the best counts")
    parser.add_argument(
        "--quick", action="store_true", help="1 warm-up step and 3 timed steps on 32 pairs: one epoch"
    )
    parser.add_argument(
        "--per-step-reference",
        action="store_true",
        help="also run ours with the reference forward in every step, to isolate what scoring once does",
    )
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps, args.pairs = 1, 3, 32
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--steps, --warmup, --batch-size and --repeats must be at least 1")
    if not args.batch_size <= args.pairs <= ROWS:
        parser.error(f"--pairs must be in [--batch-size, {ROWS}] (the order-json training rows)")
    if not 16 <= args.max_length <= 262_144:
        parser.error("--max-length must be in [16, 262144] (hyperparameters.maxSeqLength)")
    if args.worker:
        worker(args)
        return

    model_dir = builtin.resolve(MODEL)  # converted from GGUF once, then cached
    print(
        f"DPO on CPU: {MODEL}, LoRA r16 all-linear, {args.pairs} pairs from {DATA}, batch "
        f"{args.batch_size} pairs, max length {args.max_length}, {args.warmup} warm-up + {args.steps} timed "
        "optimizer steps"
    )
    runs = RUNS if args.per_step_reference else RUNS[:2]
    results: dict[str, list[dict[str, Any]]] = {which: [] for which in runs}
    for _ in range(args.repeats):
        for which in runs:
            results[which].append(measure(which, model_dir, args))
    print(
        f"\n{'run':<13} {'pairs':>5} {'tokens':>7} {'learned':>7} {'s/step':>7} {'cores':>5} {'pairs/s':>7} "
        f"{'tokens/s':>8} {'pairs/CPU-s':>11} {'reference pass':>22} {'peak RSS':>9}"
    )
    best: dict[str, tuple[float, float, float, float]] = {}
    cores: list[float] = []
    for which, measured in results.items():
        for r in measured:
            pairs, seconds, reference = r["pairs"], r["seconds"], r["reference"]
            cores.append(r["cpu_seconds"] / seconds)
            scored = f"{reference['pairs']} pairs in {reference['seconds']:.1f} s" if reference else "-"
            print(
                f"{which:<13} {pairs:5} {r['tokens']:7,} {r['learned'] / r['tokens']:7.1%} "
                f"{seconds / r['steps']:7.2f} {cores[-1]:5.2f} {pairs / seconds:7.2f} "
                f"{r['tokens'] / seconds:8.1f} {pairs / r['cpu_seconds']:11.2f} {scored:>22} "
                f"{r['peak_rss_mib']:5.0f} MiB"
            )
        best[which] = (
            max(r["pairs"] / r["seconds"] for r in measured),
            max(r["pairs"] / r["cpu_seconds"] for r in measured),
            min(epoch(r, "seconds") for r in measured),
            min(epoch(r, "cpu_seconds") for r in measured),
        )
    first = {which: measured[0] for which, measured in results.items()}
    print(
        f"(model {first['plain']['model']} plain, {first['ours']['model']} ours; activation checkpointing "
        f"{first['plain']['activation_checkpointing']} / {first['ours']['activation_checkpointing']}; "
        f"torch threads {first['ours']['threads']}; the best of {args.repeats} counts)"
    )
    if max(cores) > 1.2 * min(cores):
        print(
            f"the runs had {min(cores):.2f} to {max(cores):.2f} cores' worth of CPU time: the machine is "
            "shared, so compare per CPU-second rather than per second"
        )
    plain_rate, plain_cpu, plain_epoch, plain_epoch_cpu = best["plain"]
    for which in runs[1:]:
        rate, cpu, one_epoch, one_epoch_cpu = best[which]
        step_ratio, step_cpu = rate / plain_rate, cpu / plain_cpu
        epoch_ratio, epoch_cpu = plain_epoch / one_epoch, plain_epoch_cpu / one_epoch_cpu
        print(
            f"ratio {which}/plain per step: {step_ratio:.2f}x (per CPU-second {step_cpu:.2f}x); for one "
            f"epoch of {args.pairs} pairs, reference pass included: {epoch_ratio:.2f}x ({plain_epoch:.0f} s "
            f"vs {one_epoch:.0f} s; per CPU-second {epoch_cpu:.2f}x)"
        )


if __name__ == "__main__":
    main()
