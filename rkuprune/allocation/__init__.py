"""Allocation: turn scores into a pruning plan that meets a parameter budget."""

from rkuprune.allocation.allocators import ALLOCATORS, PruningConfig, allocate, check_feasible

__all__ = ["ALLOCATORS", "PruningConfig", "allocate", "check_feasible"]
