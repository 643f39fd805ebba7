"""The scorer interface and the ``Scores`` every scorer returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import psutil
import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.plan import PruningPlan
from rkuprune.models.structures import Structures
from rkuprune.registry import Registry

if TYPE_CHECKING:
    from rkuprune.allocation.allocators import PruningConfig

log = logging.getLogger(__name__)
GIB = 2**30


@dataclass
class ScorerConfig:
    """Fields every scorer has; a scorer's own dataclass subclasses this."""

    name: str = "magnitude"


@dataclass
class LayerScores:
    """Per query head and per MLP channel importance of one layer (fp32, higher = keep).

    ``layer`` is the importance of the whole layer, for depth pruning; only scorers with a natural
    layer score (``Scorer.scores_layers``) set it.
    """

    heads: torch.Tensor
    channels: torch.Tensor
    layer: float | None = None


@dataclass
class Scores:
    """Scores for every layer of the unpruned model, in original layer order."""

    layers: list[LayerScores]

    def check(self, structures: Structures, scorer: str) -> None:
        """Refuse scores that do not fit the model or are not finite (fp16 overflow, say)."""
        if len(self.layers) != len(structures):
            raise ConfigError("scorer", f"{scorer} scored {len(self.layers)} layers, the model has {len(structures)}")
        for index, (layer, structure) in enumerate(zip(self.layers, structures.layers, strict=True)):
            shapes = (tuple(layer.heads.shape), tuple(layer.channels.shape))
            if shapes != ((structure.num_q_heads,), (structure.intermediate_size,)):
                raise ConfigError("scorer", f"{scorer} gave shapes {shapes} for layer {index}")
            layer_value = torch.tensor([] if layer.layer is None else [layer.layer])
            for kind, values in (("head", layer.heads), ("channel", layer.channels), ("layer", layer_value)):
                if not torch.isfinite(values).all():
                    raise ConfigError(
                        "scorer",
                        f"{scorer} produced non-finite {kind} scores in layer {index} (overflow?); "
                        "score in float32 (model.dtype=float32) or lower calibration.batch_size",
                    )

    def layer_scores(self) -> list[float]:
        """One importance per layer (depth pruning); refuses scores that carry none."""
        if any(layer.layer is None for layer in self.layers):
            raise ConfigError(
                "pruning.granularity", "the scorer gives no layer scores; use scorer=shortgpt, rku or taylor"
            )
        return [float(layer.layer) for layer in self.layers]  # type: ignore[arg-type]


class Scorer:
    """Base class. ``needs_calibration`` tells the pipeline whether to build a calibration set;
    ``scores_layers`` whether its ``Scores`` carry a layer score (depth pruning), ``scores_units``
    whether they rank heads and channels (width pruning)."""

    needs_calibration: ClassVar[bool] = False
    scores_layers: ClassVar[bool] = False
    scores_units: ClassVar[bool] = True

    def __init__(self, cfg: ScorerConfig) -> None:
        self.cfg = cfg
        self.pruning: PruningConfig | None = None

    def bind(self, pruning: PruningConfig) -> None:
        """Give the scorer the run's pruning settings: a sequential scorer (``wanda_sp``) prunes each layer
        as it scores, so it must know the target and the allocation the plan will be built with."""
        self.pruning = pruning

    def check(self) -> None:
        """Validate config values (and, once bound, their fit with the pruning settings) before any model loads."""

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        raise NotImplementedError

    def compensate(self, model: nn.Module, plan: PruningPlan) -> None:
        """Adjust the kept weights for what ``plan`` removes, before slicing (FLAP's bias; default: nothing)."""

    def buffer_bytes(self, model: nn.Module) -> dict[torch.device, int]:
        """Per device, what the scorer holds beside the weights for the whole pass whatever the calibration
        (the gradient scorers' full-size accumulators; default: nothing)."""
        return {}


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: free CUDA memory, or the RAM available on a CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_buffer_memory(scorer: Scorer, model: nn.Module) -> None:
    """Refuse, before the dense evaluation and the scoring pass spend minutes, a scorer whose full-size
    buffers cannot fit beside the loaded weights (the activations of each micro-batch come on top)."""
    for device, need in scorer.buffer_bytes(model).items():
        free = free_memory(device)
        log.info(
            "%s holds %.1f GiB of gradient accumulators on %s (%.1f GiB free)",
            scorer.cfg.name,
            need / GIB,
            device,
            free / GIB,
        )
        if need > free:
            raise ConfigError(
                "scorer",
                f"'{scorer.cfg.name}' needs {need / GIB:.1f} GiB of fp32 gradient accumulators on {device} beside the "
                f"weights and {free / GIB:.1f} GiB are free; use scorer=rku (no weight gradients) or spread the "
                "model over more GPUs (model.device_map=auto)",
            )


SCORERS: Registry[Scorer] = Registry("scorer")
