"""Linear layers on prepacked oneDNN weights while a CPU model decodes.

At decoding's few rows per step, torch's float32 CPU matmul reads each weight matrix at a quarter
to a third of this machine's memory bandwidth; oneDNN, with the weights reordered once into its
blocked layout, reads them about twice as fast (benchmarks/results/rollout_cpu.md). The policy
changes every RL step, so the weights are packed when a rollout starts and dropped when it ends:
one extra copy of the model's linear weights lives while it decodes. The logits agree with
torch's matmul to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def _packable(module: nn.Module) -> bool:
    """A plain float32 CPU linear layer whose forward nothing else has replaced (accelerate's hooks, an
    enclosing use of this context)."""
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and type(weight) is nn.Parameter and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.numel() > 0 and "forward" not in vars(module))


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return forward


def can_prepack() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@contextmanager
def prepacked_linears(model: nn.Module, rows: int):
    """Inside the block, every float32 CPU `nn.Linear` of `model` (a LoRA layer's base and adapters
    included) computes with oneDNN on weights packed for `rows` rows; outside it, nothing changed.
    Only for inference: the packed copies do not follow later updates of the weights."""
    patched: list[nn.Module] = []
    try:
        if can_prepack():
            with torch.no_grad():
                for module in model.modules():
                    if _packable(module):
                        packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), rows)
                        bias = None if module.bias is None else module.bias.detach()
                        module.forward = _packed_forward(packed, bias)  # shadows nn.Linear.forward
                        patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
