"""rkuprune: reasoning-aware structured pruning of decoder LLMs."""

from rkuprune.models.io import load_pruned, save_pruned
from rkuprune.models.plan import LayerPlan, PruningPlan
from rkuprune.models.surgery import apply_plan

__all__ = ["LayerPlan", "PruningPlan", "apply_plan", "load_pruned", "save_pruned"]
