"""Mixed precision for the networks only.

Under :func:`networks_in` the bodies of encoders and decoders (the matrix products and
convolutions that dominate a step) run under :func:`torch.autocast` in the given dtype,
and their outputs come back in full precision. Everything after them stays in the
caller's dtype: the log-densities summed over thousands of pixels, products and
barycenters of experts (which divide by variances), full-covariance algebra, flows and
HMC. Autocasting the whole objective instead would also run the latent-space matrix
products in bfloat16, where a Cholesky factor or a barycenter fixed point loses the
precision it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["networks_in", "network_autocast", "full_precision", "PRECISIONS"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# A plain module global rather than a ContextVar: torch.compile reads (and guards on) globals
# but breaks its graph at ContextVar.get. Training is single-threaded per process.
_network_dtype: torch.dtype | None = None


@contextmanager
def networks_in(dtype: torch.dtype | None) -> Iterator[None]:
    """Run the encoder and decoder bodies in ``dtype`` inside the block (``None``: as is).

    Example:
        >>> with networks_in(torch.bfloat16):
        ...     pass
    """
    global _network_dtype
    previous, _network_dtype = _network_dtype, dtype
    try:
        yield
    finally:
        _network_dtype = previous


def network_autocast(device: torch.device) -> torch.autocast:
    """The autocast context a network body runs in: enabled only under :func:`networks_in`."""
    dtype = _network_dtype
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def full_precision(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 if autocast made it half or bfloat16, else unchanged (float64 stays)."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor
