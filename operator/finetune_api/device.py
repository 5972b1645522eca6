"""What trains a run, in the terms the `"auto"` rule needs: CPU or GPU, how many devices share each optimizer
step, and each GPU's memory.

Pure and explicit: the rule (`finetune_api.hyperparameters`) is handed a `Device` and never probes a
machine. Two callers build one:

- the operator, from what the training pods request (`Device.of_resources(spec.resources)`): GPUs when
  `gpusPerNode` > 0, `nodes x gpusPerNode` of them, each with the memory its node labels name
  (`nvidia.com/gpu.memory` in MiB, else the size in `nvidia.com/gpu.product`, e.g.
  `NVIDIA-H100-80GB-HBM3`, else the product's usual size from `GPU_MEMORY_GIB`), or
  `DEFAULT_GPU_MEMORY_GIB` when the selector names none; CPUs (`nodes` processes) when `gpusPerNode` is 0;
- `finetune run`, from the machine it runs on (torch's view of CUDA: one process, so one device).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from finetune_api.v1alpha1.common import Resources

GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # NVIDIA GPU feature discovery: the memory of one GPU, MiB
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # e.g. NVIDIA-H100-80GB-HBM3, NVIDIA-A100-SXM4-40GB, Tesla-T4
# When the node selector does not say: the smallest memory of the GPUs commonly used to fine-tune (L4, A10G),
# so that an unnamed GPU gets micro-batches that fit; name the product to let "auto" use more.
DEFAULT_GPU_MEMORY_GIB = 24.0
# A product's usual memory when its label carries no size, most specific first.
GPU_MEMORY_GIB: tuple[tuple[str, float], ...] = (
    ("GH200", 96.0),
    ("H200", 141.0),
    ("B200", 180.0),
    ("H100", 80.0),
    ("A100", 40.0),
    ("L40", 48.0),
    ("A10G", 24.0),
    ("A10", 24.0),
    ("L4", 24.0),
    ("V100", 16.0),
    ("T4", 16.0),
)
_SIZE = re.compile(r"(\d+)\s*GB", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """`count` devices of one `kind` share each optimizer step (data parallel: one rank each); a GPU's
    `memory_gib` bounds its micro-batch. `name` is for people (a product or a CUDA device name)."""

    kind: Literal["cpu", "gpu"]
    count: int = 1
    memory_gib: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a device count is at least 1")
        if self.kind == "gpu" and self.memory_gib <= 0:
            raise ValueError("a GPU device needs its memory")

    @classmethod
    def cpu(cls, count: int = 1) -> Device:
        return cls("cpu", count)

    @classmethod
    def gpu(cls, count: int = 1, memory_gib: float = DEFAULT_GPU_MEMORY_GIB, name: str = "") -> Device:
        return cls("gpu", count, memory_gib, name)

    @classmethod
    def of_resources(cls, resources: Resources) -> Device:
        """What a FineTuneJob's training pods run on, from what they request (see the module docstring)."""
        if resources.gpus_per_node == 0:
            return cls.cpu(resources.nodes)
        memory, name = gpu_memory(resources.node_selector)
        return cls.gpu(resources.nodes * resources.gpus_per_node, memory, name)

    def __str__(self) -> str:
        if self.kind == "cpu":
            return "1 CPU process" if self.count == 1 else f"{self.count} CPU processes"
        what = f"{self.name}, " if self.name else ""
        plural = "GPU" if self.count == 1 else "GPUs"
        return f"{self.count} {plural} ({what}{self.memory_gib:g} GiB each)"


def gpu_memory(selector: Mapping[str, str]) -> tuple[float, str]:
    """(GiB of one GPU, its product name or "") from a node selector's GPU feature discovery labels."""
    product = selector.get(GPU_PRODUCT_LABEL, "")
    mib = selector.get(GPU_MEMORY_LABEL, "")
    if mib.isdigit() and int(mib) > 0:
        return round(int(mib) / 1024, 1), product
    size = _SIZE.search(product)
    if size is not None and int(size.group(1)) > 0:
        return float(size.group(1)), product
    for marker, gib in GPU_MEMORY_GIB:
        if marker.lower() in product.lower():
            return gib, product
    return DEFAULT_GPU_MEMORY_GIB, product
