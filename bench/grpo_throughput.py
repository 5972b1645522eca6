"""RFT (GRPO) generations/s of the project's trainer against plain TRL, on CPU (not a test: `make bench`).

Both runs train the same model (the bundled SmolLM2-135M-Instruct) with the same LoRA (r 16, alpha 32,
dropout 0.05, all-linear) on the same prompts (the bundled order-json training rows without their answers),
with the same number of prompts per step, generations per prompt, maximum completion length, temperature
(1.0), learning rate (1e-6), KL coefficient (0) and number of optimizer steps; the first steps are warm-up,
left out of the timing. The reward is the same partial credit in both: the share of the reference order's
four fields that the completion, parsed as a JSON object, gets right (0 when it is not one).

- plain: `trl.GRPOTrainer` with its defaults except what anyone training on a CPU sets (use_cpu, bf16 off,
  activation checkpointing off, report_to none) and the shared settings above, the reward a plain python
  function. It samples all generations of a step in one `generate` over the repeated prompts, with
  dropout on, through the unmerged LoRA.
- ours: `finetune_trainer.methods.rft.build` on a `Run` whose `rft.grader` is that reward as a python
  grader (run in the sandbox: one worker process per batch), `klCoefficient: 0` and `learningRate: 1e-6`
  (TRL's defaults, so that both do the same work). It samples through `finetune_trainer.sampling`: each
  distinct prompt run once, finished rows leaving the batch, eval mode and the LoRA merged while sampling.

Generations/s counts the completions sampled in the timed steps; completion tokens/s their tokens (the two
runs sample different completions, so their lengths differ a little). `sample` is the share of the time
spent sampling (TRL's `_generate`: templating, sampling, decoding), `grade` the share spent on rewards; the
rest is the loss pass (forward and backward) and the optimizer. `sampled/s` is generations per second of
sampling alone. Each run is its own process; CPU-seconds are the process's CPU time (all threads), and per
CPU-second figures vary less than wall time on a shared machine. `--stop` adds a third run, ours with
`stopStrings: ["}"]` (the reply is one flat JSON object), which does less work: it shows what the setting
saves, not a like-for-like speed.

    python bench/grpo_throughput.py [--steps 2] [--warmup 1] [--prompts 2] [--generations 8]
                                    [--max-completion 32] [--repeats 1] [--stop] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

from trainer_runs import CPU_TRAINING, in_own_process  # noqa: E402

from finetune_trainer import builtin  # noqa: E402

MODEL = "builtin://models/smollm2-135m-instruct"
DATA = "builtin://datasets/order-json/training.jsonl"
RUNS = ("plain", "ours", "ours-stop")
LEARNING_RATE = 1e-6  # TRL's GRPO default
GRADE = """
import json

def grade(sample, item):
    want = json.loads(item["reference_answer"])
    got = sample["output_json"]
    if not isinstance(got, dict):
        return 0.0
    return sum(got.get(key) == value for key, value in want.items()) / len(want)
"""


def partial_credit(completions: list[Any], reference_answer: list[str], **_: Any) -> list[float]:
    """The grader above as a plain TRL reward function."""
    scores = []
    for completion, reference in zip(completions, reference_answer, strict=True):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        want = json.loads(reference)
        try:
            got = json.loads(text)
        except ValueError:
            got = None
        ok = isinstance(got, dict)
        scores.append(sum(got.get(k) == v for k, v in want.items()) / len(want) if ok else 0.0)
    return scores


def meter(trainer: Any, warmup: int, steps: int) -> Any:
    """Wraps the trainer's `_generate` (completions, tokens, time spent sampling) and `_calculate_rewards`
    (time spent grading), and returns a callback that notes them with the clocks after the warm-up steps and
    after the last, then stops the run."""
    from transformers import TrainerCallback  # noqa: PLC0415

    counts = {"generations": 0, "tokens": 0, "sampling": 0.0, "grading": 0.0}
    generate, rewards = trainer._generate, trainer._calculate_rewards

    def sampled(prompts: list[Any]) -> Any:
        wall = time.perf_counter()
        out = generate(prompts)
        counts["sampling"] += time.perf_counter() - wall
        completion_ids = out[1]
        counts["generations"] += len(completion_ids)
        counts["tokens"] += sum(len(ids) for ids in completion_ids)
        return out

    def graded(*args: Any, **kwargs: Any) -> Any:
        wall = time.perf_counter()
        out = rewards(*args, **kwargs)
        counts["grading"] += time.perf_counter() - wall
        return out

    trainer._generate, trainer._calculate_rewards = sampled, graded

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.marks: dict[int, dict[str, float]] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step in (warmup, warmup + steps):
                clocks = {"wall": time.perf_counter(), "cpu": time.process_time()}
                self.marks[state.global_step] = clocks | counts
            if state.global_step >= warmup + steps:
                control.should_training_stop = True
            return control

    return Meter()


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in builtin.resolve(DATA).read_text().splitlines() if line.strip()]


def plain(model_dir: Path, args: argparse.Namespace, out: Path) -> Any:
    from datasets import Dataset  # noqa: PLC0415
    from trl import GRPOConfig, GRPOTrainer  # noqa: PLC0415

    from finetune_api.v1alpha1.finetunejob import Adapter  # noqa: PLC0415
    from finetune_trainer.models import peft_config  # noqa: PLC0415

    prompts = [
        {"prompt": r["messages"][:-1], "reference_answer": r["messages"][-1]["content"]} for r in rows()
    ]
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=args.max_completion,
        **CPU_TRAINING,
    )
    return GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[partial_credit],
        args=config,
        train_dataset=Dataset.from_list(prompts),
        peft_config=peft_config(Adapter.model_validate({"type": "lora", "rank": 16})),
    )


def ours(model_dir: Path, args: argparse.Namespace, out: Path, stop: bool) -> Any:
    from finetune_api.hyperparameters import Resolved  # noqa: PLC0415
    from finetune_api.plan import RunPlan  # noqa: PLC0415
    from finetune_api.v1alpha1 import FineTuneJob  # noqa: PLC0415
    from finetune_trainer.data.rows import read_jsonl  # noqa: PLC0415
    from finetune_trainer.methods import Run, rft  # noqa: PLC0415

    settings: dict[str, Any] = {
        "grader": {"type": "python", "name": "partial-credit", "source": GRADE},
        "generationsPerPrompt": args.generations,
        "maxCompletionTokens": args.max_completion,
        "klCoefficient": 0.0,
        "temperature": 1.0,
    }
    if stop:
        settings["stopStrings"] = ["}"]
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {
                "name": "grpo-bench",
                "namespace": "bench",
                "uid": "00000000-0000-0000-0000-000000000000",
            },
            "spec": {
                "method": "rft",
                "baseModel": {"uri": MODEL},
                "datasets": {"training": {"uri": DATA, "format": "chat"}},
                "adapter": {"type": "lora", "rank": 16},
                "hyperparameters": {"batchSize": args.prompts, "learningRate": LEARNING_RATE},
                "checkpointing": {"saveSteps": 1_000_000},  # no checkpoint inside the timed steps
                "storage": {"bucket": "bench"},
                "rft": settings,
            },
        }
    )
    resolved = Resolved(epochs=100, batch_size=args.prompts, learning_rate=LEARNING_RATE)
    config = RunPlan.of(job, run="bench").train_contract(resolved)
    dataset = read_jsonl(DATA, builtin.resolve(DATA).read_bytes())
    if dataset.problems:
        raise ValueError(f"{DATA}: {dataset.problems[0]}")
    run = Run(config, model_dir, out / "run", train_rows=dataset.rows, eval_rows=[], gpu=False)
    return rft.build(run)


def worker(args: argparse.Namespace) -> None:
    """One run in this process; prints its measurements as one JSON line."""
    import torch  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as out:
        model_dir, where = Path(args.model_dir), Path(out)
        if args.worker == "plain":
            trainer = plain(model_dir, args, where)
        else:
            trainer = ours(model_dir, args, where, stop=args.worker == "ours-stop")
        metered = meter(trainer, args.warmup, args.steps)
        trainer.add_callback(metered)
        trainer.train()
    marks = metered.marks
    if len(marks) < 2:
        raise RuntimeError(f"the run ended after {trainer.state.global_step} steps, before the last mark")
    first, last = marks[args.warmup], marks[args.warmup + args.steps]
    result = {key: last[key] - first[key] for key in last}
    result |= {"steps": args.steps, "threads": torch.get_num_threads()}
    print(json.dumps(result), flush=True)


def measure(which: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts", str(args.prompts)]
    flags += ["--generations", str(args.generations), "--max-completion", str(args.max_completion)]
    return in_own_process(__file__, which, model_dir, flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps before the timing starts")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per optimizer step (batchSize)")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-completion", type=int, default=32, help="maximum completion tokens")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating; the best counts")
    parser.add_argument("--quick", action="store_true", help="4 generations per prompt, of 24 tokens at most")
    parser.add_argument("--stop", action="store_true", help='also run ours with stopStrings ["}"]')
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.generations, args.max_completion = 4, 24
    if (
        min(args.steps, args.warmup, args.prompts, args.repeats, args.max_completion) < 1
        or args.generations < 2
    ):
        parser.error("--steps, --warmup, --prompts, --repeats, --max-completion >= 1 and --generations >= 2")
    if args.worker:
        worker(args)
        return

    model_dir = builtin.resolve(MODEL)  # converted from GGUF once, then cached
    print(
        f"RFT (GRPO) on CPU: {MODEL}, LoRA r16 all-linear, {DATA} prompts, {args.prompts} prompts x "
        f"{args.generations} generations a step, at most {args.max_completion} completion tokens, "
        f"{args.warmup} warm-up + {args.steps} timed optimizer steps"
    )
    runs = RUNS if args.stop else RUNS[:2]
    results: dict[str, list[dict[str, Any]]] = {which: [] for which in runs}
    for _ in range(args.repeats):
        for which in runs:
            results[which].append(measure(which, model_dir, args))
    print(
        f"\n{'run':<10} {'gens':>5} {'tok/gen':>7} {'s/step':>7} {'sample':>6} {'grade':>6} {'cores':>5} "
        f"{'gens/s':>7} {'tokens/s':>8} {'sampled/s':>9} {'gens/CPU-s':>10} {'CPU-s/step':>10}"
    )
    best: dict[str, tuple[float, float, float]] = {}
    cores: list[float] = []
    for which, measured in results.items():
        for r in measured:
            gens, seconds, cpu, steps = r["generations"], r["wall"], r["cpu"], r["steps"]
            cores.append(cpu / seconds)
            print(
                f"{which:<10} {gens:5} {r['tokens'] / gens:7.1f} {seconds / steps:7.1f} "
                f"{r['sampling'] / seconds:6.0%} {r['grading'] / seconds:6.1%} {cores[-1]:5.2f} "
                f"{gens / seconds:7.3f} {r['tokens'] / seconds:8.1f} {gens / r['sampling']:9.3f} "
                f"{gens / cpu:10.3f} {cpu / steps:10.1f}"
            )
        best[which] = (
            max(r["generations"] / r["wall"] for r in measured),
            max(r["steps"] / r["wall"] for r in measured),
            max(r["generations"] / r["cpu"] for r in measured),
        )
    print(f"(torch threads {results['ours'][0]['threads']}; the best of {args.repeats} counts)")
    if max(cores) > 1.2 * min(cores):
        print(
            f"the runs had {min(cores):.2f} to {max(cores):.2f} cores' worth of CPU time: the machine is "
            "shared, so compare per CPU-second rather than per second"
        )
    for which in runs[1:]:
        gens, steps, cpu = (best[which][i] / best["plain"][i] for i in range(3))
        print(
            f"ratio {which}/plain: generations/s {gens:.2f}x, steps/s {steps:.2f}x, "
            f"generations per CPU-second {cpu:.2f}x"
        )


if __name__ == "__main__":
    main()
