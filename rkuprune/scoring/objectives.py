"""Scalar objectives that gradient-based scorers differentiate, computed from the final hidden state.

Each objective is a sum over the units it counts (tokens, or rows for ``PerSampleMean``);
``run_calibration`` divides by the count over the whole calibration set, so the gradients do not
depend on how the set is split into micro-batches.
"""

from __future__ import annotations

import torch
from torch import nn

from rkuprune.precision import at_least_fp32


class Objective:
    """A per-token quantity on the final hidden state (after the final norm) and the tokens it counts."""

    name = ""

    def weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which positions count: real tokens of the loss mask."""
        return batch["attention_mask"].bool() & batch["loss_mask"].bool()

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(self.weights(batch).sum())

    def per_token(self, model: nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def total(self, model: nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The objective summed over the counted tokens of the batch (at least fp32)."""
        values = self.per_token(model, at_least_fp32(hidden), batch)
        return torch.where(self.weights(batch).to(values.device), values, 0.0).sum()


def _logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    head = model.get_output_embeddings()
    return at_least_fp32(head(hidden.to(head.weight.dtype)))


class Energy(Objective):
    """½‖h_L‖²: label-free, and needs no LM head (the cheapest objective)."""

    name = "energy"

    def per_token(self, model: nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * hidden.pow(2).sum(dim=-1)


class LMLoss(Objective):
    """Causal-LM cross-entropy: position t predicts token t + 1, counted when that target is in the loss mask."""

    name = "lm_loss"

    def weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["attention_mask"].bool() & batch["loss_mask"].bool()
        counted = torch.zeros_like(target)
        counted[:, :-1] = target[:, 1:] & batch["attention_mask"][:, :-1].bool()
        return counted

    def per_token(self, model: nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = _logits(model, hidden)
        targets = batch["input_ids"].roll(-1, dims=1).to(logits.device)
        return nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


class Entropy(Objective):
    """The model's own next-token entropy: label-free, but needs the LM head."""

    name = "entropy"

    def per_token(self, model: nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        log_p = torch.log_softmax(_logits(model, hidden), dim=-1)
        return -(log_p.exp() * log_p).sum(dim=-1)


class PerSampleMean(Objective):
    """Another objective averaged over each row's counted tokens, rows weighted equally.

    GISP and RESP take the mean loss of one sample at a time (batch size 1) and average the
    gradients over samples, so a long trace weighs as much as a short one; pooling every token
    instead lets the longest traces dominate the mean gradient.
    """

    def __init__(self, inner: Objective) -> None:
        self.inner = inner
        self.name = f"{inner.name}/per_sample"

    def weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner.weights(batch)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """Rows with at least one counted token: each one is a sample of equal weight."""
        return int(self.weights(batch).any(dim=1).sum())

    def per_token(self, model: nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner.per_token(model, hidden, batch)

    def total(self, model: nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sum over rows of each row's mean over its counted tokens (at least fp32)."""
        values = self.per_token(model, at_least_fp32(hidden), batch)
        counted = self.weights(batch).to(values.device)
        per_row = torch.where(counted, values, 0.0).sum(dim=1)
        return (per_row / counted.sum(dim=1).clamp(min=1)).sum()


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Energy(), LMLoss(), Entropy())}
