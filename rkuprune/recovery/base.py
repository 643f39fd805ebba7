"""The recovery interface: fine-tune the sliced model after pruning and hand back plain weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from rkuprune.data.sources import DataConfig
from rkuprune.registry import Registry


@dataclass
class RecoveryConfig:
    """Fields every recovery method has; a method's own dataclass subclasses this."""

    name: str = "none"


@dataclass
class RecoveryResult:
    """The recovered model (plain weights, same shapes as the pruned one) and what the training did."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)  # training loss per step
    info: dict[str, Any] = field(default_factory=dict)  # settings, data provenance, trainable parameters


class Recovery:
    """``none``: no recovery (the pipeline then evaluates once). ``active`` says whether it trains."""

    active: ClassVar[bool] = False

    def __init__(self, cfg: RecoveryConfig) -> None:
        self.cfg = cfg

    def check(self, data: DataConfig) -> None:
        """Validate config values and data before any model is loaded."""

    def recover(self, model: nn.Module, tokenizer: Any, data: DataConfig) -> RecoveryResult:
        return RecoveryResult(model)


RECOVERY: Registry[Recovery] = Registry("recovery")
RECOVERY.register("none", RecoveryConfig)(Recovery)
