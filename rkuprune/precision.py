"""The one precision rule for reductions, losses and scores: half precision (fp16, bf16) is raised to fp32,
which a sum over thousands of terms or a vocabulary-wide log-softmax needs; fp32 and fp64 are kept, so a
float64 model (the exact-comparison tests) is reduced without fp32 rounding."""

from __future__ import annotations

import torch


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32 when it is in half precision, otherwise unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
