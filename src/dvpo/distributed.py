"""Multi-process plumbing, chosen in code so one launch command serves a GPU cluster and a CPU box.

`accelerate launch --multi_gpu --num_processes N -m dvpo <stage>` starts N processes. Without
CUDA, DDP over gloo needs `cpu=True`; DeepSpeed needs the gloo backend and must NOT get
`cpu=True`, which silently drops it and runs plain DDP (measured, docs/rl.md, "Several processes on a CPU-only machine").
The helpers below also give the RL loop what data parallelism needs beyond gradient averaging:
contiguous shards of the rollout batch, and statistics of the whole batch across processes.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs

from dvpo.algos.masked import whiten_with


def deepspeed_requested() -> bool:
    """True under `accelerate launch --use_deepspeed` (or a config file that selects DeepSpeed)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def check_optimizer(name: str) -> None:
    """Adafactor factors each weight matrix's second moment and clips its update per weight; DeepSpeed's ZeRO
    hands the optimizer one flat slice of all weights per process, so neither would hold: refuse, before any file."""
    if name == "adafactor" and deepspeed_requested():
        from dvpo.errors import ConfigError

        raise ConfigError("--optimizer adafactor under DeepSpeed: ZeRO hands the optimizer flat slices of the "
                          "weights, so Adafactor would neither factor its moments nor clip per weight; use adamw, "
                          "or DDP (configs/accelerate/ddp.yaml)")


def on_cpu() -> bool:
    return not torch.cuda.is_available()


def process_state() -> PartialState:
    """The shared process state (initialises the process group when launched with several processes)."""
    if on_cpu() and deepspeed_requested():
        return PartialState(backend="gloo")
    return PartialState(cpu=on_cpu())


def make_accelerator(**kwargs) -> Accelerator:
    """An Accelerator whose device and backend suit this machine and launch mode."""
    if on_cpu() and deepspeed_requested():
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **kwargs)
    return Accelerator(cpu=on_cpu(), **kwargs)


def trainer_device_arguments() -> dict:
    """TrainingArguments fields with the same choice as `make_accelerator`, for the Trainer-based stages."""
    if not on_cpu():
        return {"use_cpu": False}
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return {"use_cpu": not deepspeed_requested(), **({"ddp_backend": "gloo"} if launched else {})}


def end_process_group() -> None:
    """Wait for every process, then tear the process group down: a process that leaves while another
    still writes its outputs can abort gloo's threads ("terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def fsdp_loading(enabled: bool) -> dict:
    """`from_pretrained` arguments that shard a model over the processes with FSDP2 (torch's fully_shard,
    applied by transformers at load time); empty when FSDP is off or there is one process."""
    if not enabled:
        return {}
    if deepspeed_requested():
        from dvpo.errors import ConfigError

        raise ConfigError("--fsdp and a DeepSpeed launch config both shard the model: choose one "
                          "(launch --fsdp with configs/accelerate/ddp.yaml)")
    state = process_state()
    if state.num_processes == 1:
        return {}
    from transformers.distributed.configuration_utils import DistributedConfig

    return {"distributed_config": DistributedConfig(fsdp_size=state.num_processes)}


def parameters_held(model) -> int:
    """Parameter elements this process holds: all of them unless the model is sharded."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of this process's contiguous share of n items; n must split evenly."""
    if n % world:
        raise ValueError(f"{n} items do not split evenly over {world} processes")
    size = n // world
    return rank * size, (rank + 1) * size


class BatchStats:
    """Sums over the rollout batch of every process, so normalisation sees the global batch.

    A single process (or `accelerator=None`) reduces nothing, and the results are the local ones.
    """

    def __init__(self, accelerator: Accelerator | None = None):
        self.accelerator = accelerator

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a small float tensor across processes, in float64."""
        values = values.double()
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return values
        return self.accelerator.reduce(values.to(self.accelerator.device), reduction="sum").to(values.device)

    def masked_moments(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, population variance, count) of x over the valid tokens of the whole batch."""
        x64, m = x.double(), mask.double()
        total, count = self.sum(torch.stack([(x64 * m).sum(), m.sum()]))
        count = count.clamp(min=1.0)
        mean = total / count  # two passes, in float64: no cancellation when the mean is large
        var = self.sum((((x64 - mean) ** 2) * m).sum().reshape(1))[0] / count
        return mean.to(x.dtype), var.to(x.dtype), count

    def masked_whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`dvpo.algos.masked.masked_whiten` (unbiased variance) over the whole batch."""
        mean, var, count = self.masked_moments(x, mask)
        unbiased = var * count / (count - 1).clamp(min=1.0)
        return whiten_with(x, mask, mean, unbiased.to(x.dtype))

    def mean_of(self, record: dict[str, float]) -> dict[str, float]:
        """Every float of a per-process metrics record averaged over the processes."""
        keys = sorted(k for k, v in record.items() if isinstance(v, float))
        if not keys or self.accelerator is None or self.accelerator.num_processes == 1:
            return record
        sums = self.sum(torch.tensor([record[k] for k in keys])) / self.accelerator.num_processes
        return {**record, **{k: float(v) for k, v in zip(keys, sums)}}
