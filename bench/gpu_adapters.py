"""QLoRA and bf16 LoRA on one CUDA GPU, through the trainer's model path, with a model built from a config
(not a test; CUDA only, except `--cpu-smoke`).

`bench/gpu_check.py` runs the whole SFT method on the bundled model and needs the repository's venv; this
one needs only torch, transformers, peft, bitsandbytes, pydantic and boto3, so it runs on a GPU machine with
a different Python. It builds a Llama-architecture model of `--size` from its config (random weights, saved
once as bf16 safetensors), then for each adapter loads it the way the trainer does
(`finetune_trainer.models.load_kwargs`: 4-bit NF4 with double quantization and bf16 compute for qlora, bf16
for lora), prepares it (`prepare_quantized`), wraps it in the trainer's LoRA config (`peft_config`: rank 16,
all linear layers) and trains `--steps` optimizer steps of `--batch-size` sequences of `--seq-len` tokens on
a learnable synthetic sequence (each token a fixed function of the one before), with AdamW at 1e-3 and SDPA
attention. It prints one JSON object per adapter: tokens/s and steps/s over the timed steps (after
`--warmup`), peak GPU memory allocated, the loss at the first and last step, and the achieved TFLOP/s
counted as 4 x parameters x tokens (forward plus the activation gradients; the frozen base has no weight
gradients).

    PYTHONPATH=operator:trainer_image python bench/gpu_adapters.py [--size 1b] [--steps 20] [--warmup 3]
        [--batch-size 8] [--seq-len 1024] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]

import torch  # noqa: E402

from finetune_api.v1alpha1.finetunejob import Adapter, AdapterType  # noqa: E402
from finetune_trainer import models  # noqa: E402

# hidden, intermediate, layers, attention heads, key/value heads (Llama-style, vocabulary 32,768)
SHAPES = {"tiny": (64, 128, 2, 4, 2), "135m": (576, 1536, 30, 9, 3), "1b": (2048, 8192, 16, 32, 8),
          "8b": (4096, 14336, 32, 32, 8)}  # fmt: skip
FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
FIELDS += ("num_key_value_heads",)
SIZES = {name: dict(zip(FIELDS, shape, strict=True)) for name, shape in SHAPES.items()}
VOCABULARY = 32_768


def build(size: str, where: Path, device: str) -> int:
    """Save a randomly initialised model of `size` under `where`; its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    config = LlamaConfig(vocab_size=VOCABULARY, max_position_embeddings=8192, **SIZES[size])
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(where)
    del model
    return count


def batches(args: argparse.Namespace, device: str) -> torch.Tensor:
    """Sequences a model can learn: each token (a * previous + c) mod 1,000, from a random start."""
    generator = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 1000, (args.batch_size * (args.steps + args.warmup), 1), generator=generator)
    tokens = [starts]
    for _ in range(args.seq_len - 1):
        tokens.append((tokens[-1] * 37 + 11) % 1000)
    return torch.cat(tokens, dim=1).to(device)


def train(
    adapter: Adapter, where: Path, args: argparse.Namespace, params: int, device: str
) -> dict[str, Any]:
    from peft import get_peft_model  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    gpu = device == "cuda"
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(
        where, **models.load_kwargs(adapter, gpu=gpu), attn_implementation="sdpa", device_map={"": device}
    )
    model = models.prepare_quantized(model, adapter, activation_checkpointing=False)
    model = get_peft_model(model, models.peft_config(adapter))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = batches(args, device)
    losses: list[float] = []
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = data[step * args.batch_size : (step + 1) * args.batch_size]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=gpu):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    if gpu:
        torch.cuda.synchronize()
    took = time.perf_counter() - start
    tokens = args.steps * args.batch_size * args.seq_len
    result = {
        "adapter": str(adapter.type),
        "parameters": params,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps_per_s": round(args.steps / took, 3),
        "tokens_per_s": round(tokens / took),
        "tflops": round(4 * params * tokens / took / 1e12, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }
    del model, optimizer
    gc.collect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="1b")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--cpu-smoke", action="store_true", help="lora only, on CPU, to check the script")
    args = parser.parse_args()
    device = "cpu" if args.cpu_smoke else "cuda"
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA GPU: run it where there is one, or use --cpu-smoke", file=sys.stderr)
        return 2
    kinds = [AdapterType.LORA] if args.cpu_smoke else [AdapterType.QLORA, AdapterType.LORA]
    results = {"device": torch.cuda.get_device_name() if not args.cpu_smoke else "cpu", "size": args.size}
    with tempfile.TemporaryDirectory() as folder:
        params = build(args.size, Path(folder), device)
        for kind in kinds:
            results[str(kind)] = train(Adapter(type=kind), Path(folder), args, params, device)
            print(json.dumps(results[str(kind)]), flush=True)
    print(json.dumps(results))
    fell = all(results[str(k)]["loss_last"] < results[str(k)]["loss_first"] for k in kinds)
    return 0 if fell else 1


if __name__ == "__main__":
    sys.exit(main())
