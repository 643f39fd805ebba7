"""``lora``: LoRA recovery fine-tuning of the pruned model with PEFT, merged back into plain weights.

As LLM-Pruner's post-training (Ma et al., 2023): low-rank adapters on every projection of every kept
layer, trained with the causal-LM loss on text, then merged (W ← W + α/r · B·A), so the saved model
has ordinary weights of the pruned shapes and loads like any pruned model.

Data come from a calibration source (``recovery.source``: a registered ``calibration`` source, which
only ever reads train splits); evaluation datasets are refused by name. The source is asked for
``steps × batch_size × grad_accumulation`` sequences' worth of tokens and cycled if it yields fewer.
Target modules are named by role (q, k, v, o, gate, up, down) and resolved by the model adapter, so
no architecture's module names are written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationSource
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.evaluation.base import TASKS
from rkuprune.evaluation.perplexity import DATASETS
from rkuprune.models.adapters import adapter_for
from rkuprune.recovery.base import RECOVERY, Recovery, RecoveryConfig, RecoveryResult

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class LoRAConfig(RecoveryConfig):
    """PEFT LoRA settings; the defaults are sized for SmolLM2 on a CPU (a few minutes)."""

    name: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ROLES))  # roles: q k v o gate up down
    learning_rate: float = 5e-4
    warmup_steps: int = 8  # linear warm-up, then linear decay to zero (as transformers' Trainer)
    weight_decay: float = 0.0
    steps: int = 80  # optimizer steps
    batch_size: int = 2  # sequences per micro-batch
    grad_accumulation: int = 1  # micro-batches per optimizer step
    seqlen: int = 128
    source: str = "pydoc"  # a calibration source (train split), never an evaluation split
    seed: int = 0
    gradient_checkpointing: bool = False  # for 7-8B models on one GPU


def evaluation_names() -> set[str]:
    """Names of evaluation datasets and tasks that are not also train-split calibration sources."""
    return (set(DATASETS) | set(TASKS.names())) - set(CALIBRATION_SOURCES.names())


@RECOVERY.register("lora", LoRAConfig)
class LoRARecovery(Recovery):
    cfg: LoRAConfig
    active = True

    def check(self, data: DataConfig) -> None:
        cfg = self.cfg
        for name in ("rank", "steps", "batch_size", "grad_accumulation", "seqlen"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"recovery.{name}", f"{getattr(cfg, name)} must be at least 1")
        for name in ("alpha", "learning_rate"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"recovery.{name}", f"{getattr(cfg, name)} must be positive")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError("recovery.dropout", f"{cfg.dropout} is outside [0, 1)")
        if not cfg.target_modules or not set(cfg.target_modules) <= set(ROLES):
            bad = sorted(set(cfg.target_modules) - set(ROLES)) or ["(none)"]
            raise ConfigError("recovery.target_modules", f"'{bad[0]}' is not one of {', '.join(ROLES)}")
        self.data_source().check(data)

    def data_source(self) -> CalibrationSource:
        """The calibration source that supplies the training text, sized for the training run."""
        cfg = self.cfg
        if cfg.source in evaluation_names() or cfg.source.endswith(("test", "validation", "dev")):
            raise ConfigError(
                "recovery.source",
                f"'{cfg.source}' is an evaluation split; recovery trains on train-split calibration sources only: "
                f"{', '.join(self._sources())}",
            )
        if cfg.source not in self._sources():
            raise ConfigError(
                "recovery.source", f"unknown source '{cfg.source}'; choose one of {', '.join(self._sources())}"
            )
        entry = CALIBRATION_SOURCES.get(cfg.source, "recovery.source")
        sequences = cfg.steps * cfg.batch_size * cfg.grad_accumulation
        source_cfg = entry.config(
            name=cfg.source,
            num_tokens=sequences * cfg.seqlen,
            seqlen=cfg.seqlen,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        return entry.cls(source_cfg)

    @staticmethod
    def _sources() -> list[str]:
        """Calibration sources that read fixed text (not the ones that generate it with the model)."""
        return [name for name in CALIBRATION_SOURCES.names() if not CALIBRATION_SOURCES.get(name).cls.regenerates]

    def target_names(self, model: nn.Module) -> list[str]:
        """Full module names of the projections with the configured roles, in every layer."""
        adapter = adapter_for(model)
        wanted = set()
        for layer in adapter.layers():
            roles = adapter.roles(layer)  # a fused Linear is targeted when any of its roles is
            wanted |= {id(p.linear) for role, p in roles.items() if role in self.cfg.target_modules}
        return [name for name, module in model.named_modules() if id(module) in wanted]

    def recover(self, model: nn.Module, tokenizer: Any, data: DataConfig) -> RecoveryResult:
        """Train the adapters, merge them into the weights, and restore the model's gradient flags."""
        flags = [(p, p.requires_grad) for p in model.parameters()]
        peft_model, losses, info = self.train(model, tokenizer, data)
        merged = peft_model.merge_and_unload()
        if self.cfg.gradient_checkpointing:
            merged.gradient_checkpointing_disable()
        for p, flag in flags:
            p.requires_grad_(flag)
        merged.eval()
        return RecoveryResult(merged, losses, info)

    def train(self, model: nn.Module, tokenizer: Any, data: DataConfig) -> tuple[Any, list[float], dict[str, Any]]:
        """Wrap ``model`` with LoRA adapters and train them; returns the PEFT model (in eval mode), the
        loss of every step and what was trained on."""
        from peft import LoraConfig, get_peft_model

        cfg = self.cfg
        calibration = self.data_source().build(tokenizer, data)
        torch.manual_seed(cfg.seed)
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=self.target_names(model),
            bias="none",
        )
        peft_model = get_peft_model(model, lora)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_linear(cfg.warmup_steps, cfg.steps))
        batches = list(calibration.batches(model.get_input_embeddings().weight.device))
        losses = []
        peft_model.train()
        for step in range(cfg.steps):
            total = 0.0
            for micro in range(cfg.grad_accumulation):
                batch = batches[(step * cfg.grad_accumulation + micro) % len(batches)]
                counted = batch["attention_mask"].bool() & batch["loss_mask"].bool()
                labels = batch["input_ids"].masked_fill(~counted, -100)
                out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
                (out.loss / cfg.grad_accumulation).backward()
                total += out.loss.item() / cfg.grad_accumulation
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
        peft_model.eval()
        info = {
            "method": "lora",
            "trainable_params": sum(p.numel() for p in trainable),
            "adapted_modules": len(lora.target_modules),
            "sequences_per_step": cfg.batch_size * cfg.grad_accumulation,
            "epochs": cfg.steps * cfg.grad_accumulation / len(batches),
            "data": calibration.provenance,
        }
        return peft_model, losses, info


def _warmup_then_linear(warmup: int, total: int):  # noqa: ANN202 - returns the LambdaLR factor function
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor
