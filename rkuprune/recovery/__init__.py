"""Recovery fine-tuning of the pruned model (``recovery`` group): ``none`` (default) or ``lora``.

Each method module registers itself with ``RECOVERY``; ``import_submodules`` loads them all.
"""

from rkuprune.recovery.base import RECOVERY, Recovery, RecoveryConfig, RecoveryResult
from rkuprune.registry import import_submodules

import_submodules(__name__)

__all__ = ["RECOVERY", "Recovery", "RecoveryConfig", "RecoveryResult"]
