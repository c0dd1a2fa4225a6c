"""GPU-to-host copies for weight publication: one reused, pinned host buffer per bucket.

A copy from the GPU into pageable memory is synchronous, one tensor at a time, and goes through a
driver bounce buffer. Into pinned memory it is a plain DMA that can be queued: every tensor of a
bucket is queued without waiting and the bucket waits once, before it is handed on. The buffers
live as long as the engine and are reused by every publication, so bucket k of publication v+1
overwrites bucket k of publication v: the coordinator has sent the whole of v (ZeroMQ released
every frame) before it asks for v+1.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor


class HostStaging:
    """Host buffers by bucket index, reallocated only when a bucket's size changes."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.buffers: dict[int, Tensor] = {}

    def buffer(self, index: int, nbytes: int) -> Tensor:
        held = self.buffers.get(index)
        if held is None or held.numel() != nbytes:
            held = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            self.buffers[index] = held
        return held


_STAGING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def staging_for(engine, dtype: torch.dtype, bucket_bytes: int) -> HostStaging:
    """The engine's staging buffers for one bucketing (dtype and bucket size); pinned when CUDA is there."""
    per_engine = _STAGING.setdefault(engine, {})
    return per_engine.setdefault((dtype, bucket_bytes), HostStaging(pin=torch.cuda.is_available()))


def bucket_nbytes(params: list[Tensor], dtype: torch.dtype) -> int:
    return sum(p.numel() for p in params) * dtype.itemsize


def stage_bucket(bucket: list[tuple[str, Tensor]], dtype: torch.dtype, buffer: Tensor) -> list[tuple[str, Tensor]]:
    """Copy each (name, tensor) into its slice of `buffer` in `dtype`; return the slices, shaped like the tensors.

    The casts run on the tensors' device, the copies are queued (non_blocking), and one stream
    synchronisation per bucket makes the host data complete before it is returned.
    """
    staged, offset, devices = [], 0, set()
    for name, tensor in bucket:
        source = tensor.detach()
        if source.dtype != dtype:
            source = source.to(dtype)  # on the GPU: half the bytes to move for bf16
        size = source.numel() * dtype.itemsize
        view = buffer[offset : offset + size].view(dtype).view(source.shape)
        view.copy_(source, non_blocking=True)
        staged.append((name, view))
        offset += size
        if source.device.type == "cuda":
            devices.add(source.device)
    for device in devices:
        torch.cuda.current_stream(device).synchronize()
    return staged
