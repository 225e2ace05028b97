"""torch.distributed helpers shared by the sampler and the epoch loop.

Every helper is a no-op (or answers 1) without an initialised process group, so the same
code runs in one process and under DDP / Ray Train.
"""

from __future__ import annotations

import torch


def initialized() -> bool:
    """Is a default process group in use?"""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """World size of the default process group, or 1 when torch.distributed is not in use."""
    if initialized():
        return torch.distributed.get_world_size()
    return 1


def collective_device(hint: torch.Tensor | None = None) -> torch.device:
    """NCCL only moves CUDA tensors; every other backend is happy on the CPU."""
    if torch.distributed.get_backend() == "nccl":
        if hint is not None and hint.is_cuda:
            return hint.device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """all_gather of tensors (rows x n) whose n differs by rank (the last batch may be short).

    Two collectives: the sizes, then the padded data, concatenated along the last axis.
    """
    world = torch.distributed.get_world_size()
    t = t.to(device)
    n = torch.tensor([t.shape[-1]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    m = int(max(int(s) for s in sizes))
    padded = torch.zeros((*t.shape[:-1], m), dtype=t.dtype, device=device)
    padded[..., : t.shape[-1]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(out, padded)
    return torch.cat([o[..., : int(s)] for o, s in zip(out, sizes, strict=True)], dim=-1).cpu()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (the values themselves without torch.distributed)."""
    if not initialized():
        return values
    dev = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()
