"""Parameter counts and measured sparsity, as docs/design.md section 2 defines them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.models.adapters import adapter_for

FINGERPRINT_SAMPLES = 4096  # values sampled per tensor (besides its sum)


@dataclass(frozen=True)
class ParamCounts:
    """Whole-model parameters (tied weights counted once) and decoder-layer linear parameters."""

    total: int
    prunable: int


def count_params(model: nn.Module) -> ParamCounts:
    adapter = adapter_for(model)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    prunable = 0
    for layer in adapter.layers():
        linears = (linear for linear, _ in adapter.linears(layer))  # a fused Linear counts once
        prunable += sum(p.numel() for linear in linears for p in linear.parameters(recurse=False))
    return ParamCounts(total=total, prunable=prunable)


def sparsity(before: ParamCounts, after: ParamCounts) -> float:
    """1 - prunable parameters after / before."""
    return 1.0 - after.prunable / before.prunable


def total_reduction(before: ParamCounts, after: ParamCounts) -> float:
    """Whole-model parameter reduction (embeddings, LM head and norms included)."""
    return 1.0 - after.total / before.total


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's weights, so that cached dense metrics follow the weights and not
    the config (a folder overwritten behind ``model.path`` or an unpinned hub id changes it).

    Per tensor: name, shape, dtype, a strided sample of its raw values and its L2 norm in float64
    (rounded to 10 digits, so the reduction order of the CPU or GPU kernels cannot change it).
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES]
        norm = float(torch.linalg.vector_norm(flat if flat.is_floating_point() else flat.double(), dtype=torch.float64))
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{norm:.10e}|".encode())
        digest.update(sample.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
