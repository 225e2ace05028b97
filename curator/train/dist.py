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


def collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; every other backend is happy on the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_fixed(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's ``t`` (same shape on every rank), stacked along a new first axis, on the CPU."""
    t = t.to(device)
    out = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, t)
    return torch.stack(out).cpu()


def all_gather_varlen(t: torch.Tensor, counts: list[int], device: torch.device) -> torch.Tensor:
    """all_gather of (rows x n) tensors whose n differs by rank, concatenated along n in rank order.

    ``counts`` (every rank's n, e.g. from an earlier :func:`all_gather_fixed`) sizes the
    padding, so this is one collective.
    """
    m = max(counts)
    padded = torch.zeros((*t.shape[:-1], m), dtype=t.dtype, device=device)
    padded[..., : t.shape[-1]] = t.to(device)
    out = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(out, padded)
    return torch.cat([o[..., :c] for o, c in zip(out, counts, strict=True)], dim=-1).cpu()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (the values themselves without torch.distributed)."""
    if not initialized():
        return values
    dev = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()
