"""Scorers: one float per query head and per MLP channel of every layer (higher = keep).

Each scorer module registers itself with ``SCORERS``; ``import_submodules`` loads them all.
"""

from rkuprune.registry import import_submodules
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores

import_submodules(__name__)

__all__ = ["SCORERS", "LayerScores", "Scorer", "ScorerConfig", "Scores"]
