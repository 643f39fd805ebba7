"""Save and load pruned models as plain ``save_pretrained`` folders (safetensors, never pickles).

A folder holds the weights, ``config.json`` extended with per-layer sizes, ``pruning_plan.json`` and
the tokenizer. ``load_pruned`` rebuilds the architecture from the config, resizes each layer and
loads the weights, after checking the sizes, the plan and every tensor: a malformed or contradictory
folder is one ``CheckpointError`` naming the file or field. No code from the folder ever runs. When
every layer has the same sizes the top-level config fields describe them, so
``AutoModelForCausalLM.from_pretrained`` loads it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rkuprune.errors import CheckpointError, PlanError
from rkuprune.models.adapters import ROLES, adapter_for
from rkuprune.models.plan import PruningPlan
from rkuprune.models.structures import LayerStructure, Structures
from rkuprune.models.surgery import SIZES_KEY
from rkuprune.tracking.atomic import follow_umask
from rkuprune.versions import versions

PLAN_FILE = "pruning_plan.json"
DIGESTS_KEY = "weights_sha256"  # in the plan's metadata: file name -> sha256 of each tensor file save_pruned wrote
LAYER_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
BIAS_NAMES = set(ROLES)


def save_pruned(model: PreTrainedModel, tokenizer: Any, plan: PruningPlan, path: str | Path) -> Path:
    """Write a sliced model, its plan and tokenizer to ``path``, swapped in atomically: the new folder is
    complete before the old one is moved aside, so an interrupt leaves one of the two in place."""
    path = Path(path)
    if getattr(model.config, SIZES_KEY, None) is None:
        raise CheckpointError("save_pruned expects a sliced model: call apply_plan(model, plan, 'slice') first")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new."))
    try:
        _save_without_custom_code(model, staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        plan.metadata.setdefault("versions", versions())
        digests = {file.name: sha256_of(file) for file in sorted(staging.glob("*.safetensors"))}
        dataclasses.replace(plan, metadata={**plan.metadata, DIGESTS_KEY: digests}).save(staging / PLAN_FILE)
        follow_umask(staging)
        _swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def sha256_of(file: Path) -> str:
    with file.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _save_without_custom_code(model: PreTrainedModel, folder: Path) -> None:
    """``save_pretrained`` without the config's ``auto_map``: the model in hand runs transformers' own
    code (rkuprune never loads remote code), but hub configs such as Phi-3's name custom code there,
    which ``load_pruned`` would then refuse."""
    auto_map = model.config.__dict__.pop("auto_map", None)
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if auto_map is not None:
            model.config.auto_map = auto_map


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an existing ``path`` is renamed aside first and deleted last."""
    if not path.exists():
        new.rename(path)
        return
    old = path.with_name(f".{path.name}.old.{uuid.uuid4().hex[:8]}")
    path.rename(old)
    try:
        new.rename(path)
    except BaseException:
        old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _resize_linear(linear: nn.Linear, out_features: int, in_features: int, bias: bool) -> None:
    """Give ``linear`` empty weights of the saved shape (on the meta device, inside init_empty_weights)."""
    like = {"dtype": linear.weight.dtype, "device": linear.weight.device}
    linear.weight = nn.Parameter(torch.empty(out_features, in_features, **like))
    linear.bias = nn.Parameter(torch.empty(out_features, **like)) if bias else None
    linear.out_features, linear.in_features = out_features, in_features


def _resize_layers(model: PreTrainedModel, sizes: list[dict[str, Any]]) -> None:
    """Resize each layer's Linears to the saved shapes, role by role (a fused Linear holds several roles)."""
    adapter = adapter_for(model)
    head_dim, hidden = adapter.head_dim, model.config.hidden_size
    if len(sizes) != len(adapter.layers()):
        raise CheckpointError(f"config has {len(adapter.layers())} layers but {SIZES_KEY} describes {len(sizes)}")
    for layer, size in zip(adapter.layers(), sizes, strict=True):
        q_dim = size["num_attention_heads"] * head_dim
        kv_dim = size["num_key_value_heads"] * head_dim
        width = size["intermediate_size"]
        shapes = {
            **{"q": (q_dim, hidden), "k": (kv_dim, hidden), "v": (kv_dim, hidden), "o": (hidden, q_dim)},
            **{"gate": (width, hidden), "up": (width, hidden), "down": (hidden, width)},
        }
        for linear, held in adapter.linears(layer):
            out_features = sum(shapes[role][0] for role in held)
            in_features = shapes[next(iter(held))][1]
            _resize_linear(linear, out_features, in_features, bias=bool(set(held) & set(size["biases"])))
        adapter.set_attention_heads(layer, size["num_attention_heads"], size["num_key_value_heads"])
        adapter.set_intermediate_size(layer, width)


def load_pruned(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, Any]:
    """Rebuild a pruned model saved by ``save_pruned`` and return ``(model, tokenizer)``.

    Everything is checked before any weight is used: config.json's per-layer sizes, pruning_plan.json
    (types, ranges, and agreement with the sizes), the weight files and every tensor's name, shape
    and dtype, then each weight file's sha256 against the plan's record. A folder that asks for custom
    code (``auto_map``) is refused; no folder code ever runs.
    """
    path = Path(path)
    raw = checked_config(path)
    sizes = raw[SIZES_KEY]
    plan = checked_plan(path, sizes)
    with _names(path / "config.json"):
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):
        _resize_layers(model, sizes)
    if plan.base_layers:
        _check_plan_ranges(path, plan, model)
    state = _read_weights(path)
    _check_tensors(path, state, model.state_dict(), raw, bool(config.tie_word_embeddings))
    _check_digests(path, plan, _weight_files(path))  # last: what is left once names, shapes and dtypes agree
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    tokenizer = None
    if (path / "tokenizer_config.json").is_file():
        with _names(path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "tokenizer_config.json"):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return model, tokenizer


@contextmanager
def _names(file: Path) -> Iterator[None]:
    """transformers' own errors on a malformed config or tokenizer (AttributeError, ValueError, IndexError,
    RecursionError, JSONDecodeError) name no file: raise them as a CheckpointError naming ``file``."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any error of the library reading this file
        reason = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise CheckpointError(
            f"{file}: transformers cannot read it ({type(exc).__name__}: {reason}); save the model again"
        ) from None


def read_json_file(file: Path) -> Any:
    """A JSON file, or a CheckpointError naming it."""
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; is this a folder written by save_pruned?") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{file}: not readable JSON ({type(exc).__name__}: {str(exc)[:120]})") from None


def refuse_custom_code(folder: Path) -> None:
    """A folder whose config or tokenizer config names custom code (``auto_map``) is refused, not run."""
    for name in ("config.json", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            data = read_json_file(file)
            if _has_key(data, "auto_map"):
                raise CheckpointError(
                    f"{file}: 'auto_map' asks to run the folder's own Python code, which rkuprune never does; "
                    "remove 'auto_map' if the architecture is a standard one"
                )


def _has_key(data: Any, key: str) -> bool:
    """Whether ``key`` is a key of any object nested in ``data`` (a sub-config's ``auto_map`` counts too),
    searched without recursion."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def checked_config(path: Path) -> dict[str, Any]:
    """config.json as a dict, with the per-layer sizes checked (types, positive, heads divisible by KV heads)."""
    refuse_custom_code(path)
    file = path / "config.json"
    raw = read_json_file(file)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    sizes = raw.get(SIZES_KEY)
    if sizes is None:
        raise CheckpointError(f"{file} has no '{SIZES_KEY}'; it was not written by save_pruned")
    if not isinstance(sizes, list) or not sizes:
        raise CheckpointError(f"{file}: '{SIZES_KEY}' must be a non-empty list of per-layer sizes")
    for i, size in enumerate(sizes):
        where = f"{file}: {SIZES_KEY}[{i}]"
        if not isinstance(size, dict):
            raise CheckpointError(f"{where} is not an object")
        for name in LAYER_FIELDS:
            value = size.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"{where}.{name} is {value!r}; it must be a positive integer")
        if size["num_attention_heads"] % size["num_key_value_heads"]:
            raise CheckpointError(
                f"{where}: num_attention_heads {size['num_attention_heads']} is not a multiple of "
                f"num_key_value_heads {size['num_key_value_heads']}"
            )
        biases = size.get("biases")
        if not isinstance(biases, list) or not set(biases) <= BIAS_NAMES:
            raise CheckpointError(f"{where}.biases is {biases!r}; it must list some of {sorted(BIAS_NAMES)}")
    return raw


def checked_plan(path: Path, sizes: list[dict[str, Any]]) -> PruningPlan:
    """pruning_plan.json, type-checked, and in agreement with config.json's per-layer sizes."""
    file = path / PLAN_FILE
    try:
        plan = PruningPlan.from_dict(read_json_file(file))
    except PlanError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    kept = sorted(plan.layers, key=lambda lp: lp.index)
    if len(kept) != len(sizes):
        raise CheckpointError(f"{file}: the plan keeps {len(kept)} layers but config.json describes {len(sizes)}")
    for position, (lp, size) in enumerate(zip(kept, sizes, strict=True)):
        counts = (len(lp.q_heads), len(lp.kv_heads), len(lp.mlp_channels))
        saved = tuple(size[name] for name in LAYER_FIELDS)
        if counts != saved:
            raise CheckpointError(
                f"{file}: layer {lp.index} keeps {counts} (q heads, kv heads, channels) but config.json's "
                f"{SIZES_KEY}[{position}] says {saved}"
            )
    return plan


def _check_plan_ranges(path: Path, plan: PruningPlan, model: PreTrainedModel) -> None:
    """Indices in range and GQA groups kept evenly, against the unpruned sizes the plan records."""
    try:
        structures = Structures(
            tuple(
                LayerStructure(
                    i,
                    model.config.hidden_size,
                    adapter_for(model).head_dim,
                    base["num_attention_heads"],
                    base["num_key_value_heads"],
                    base["intermediate_size"],
                )
                for i, base in enumerate(plan.base_layers)
            )
        )
        plan.validate(structures)
    except (PlanError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{path / PLAN_FILE}: {exc}") from None


def _weight_files(path: Path) -> list[Path]:
    """The files save_pretrained wrote (the index's shards, or model.safetensors); any other is refused."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_file(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        files = sorted({path / str(name) for name in weight_map.values()})
    else:
        files = [path / "model.safetensors"]
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; the folder's weights are incomplete")
    stray = sorted(set(path.glob("*.safetensors")) - set(files))
    if stray:
        raise CheckpointError(f"{stray[0]}: not part of the saved checkpoint; remove it (it would override weights)")
    return files


def _check_digests(path: Path, plan: PruningPlan, files: list[Path]) -> None:
    """Each tensor file has the sha256 pruning_plan.json recorded at save time (a bit flip, or a same-shape
    swap, would otherwise load silently). Folders saved before digests were recorded are not checked."""
    digests = plan.metadata.get(DIGESTS_KEY)
    if digests is None:
        return
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise CheckpointError(f"{path / PLAN_FILE}: metadata.{DIGESTS_KEY} must map file names to sha256 digests")
    for file in files:
        expected = digests.get(file.name)
        if expected is None:
            raise CheckpointError(f"{file}: no sha256 recorded in {PLAN_FILE}; it was not written by save_pruned")
        actual = sha256_of(file)
        if actual != expected:
            raise CheckpointError(
                f"{file}: sha256 {actual[:16]}... differs from the {expected[:16]}... recorded in {PLAN_FILE}; "
                "the file changed after save_pruned (corrupted or replaced): copy or save the model again"
            )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        try:
            tensors = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types, without the file name
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
        twice = sorted(set(tensors) & set(state))
        if twice:
            raise CheckpointError(f"{file}: tensor '{twice[0]}' is also in another weight file")
        state.update(tensors)
    return state


def _check_tensors(
    path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], raw: dict[str, Any], tied: bool
) -> None:
    """Every tensor present, of the planned shape and the config's dtype; none extra; tying as config says."""
    if tied and "lm_head.weight" in state:
        raise CheckpointError(
            f"{path}/config.json: tie_word_embeddings is true but the weights hold a separate lm_head.weight"
        )
    for name, tensor in expected.items():
        if name not in state and not (tied and name == "lm_head.weight"):
            hint = " (config.json says tie_word_embeddings is false)" if name == "lm_head.weight" else ""
            raise CheckpointError(f"{path}: tensor '{name}' is missing from the weights{hint}")
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(state[name].shape)} but the plan in config.json "
                f"needs {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: tensor '{unexpected[0]}' in the weights has no place in the model")
    declared = raw.get("dtype") or raw.get("torch_dtype")
    wanted = getattr(torch, declared, None) if isinstance(declared, str) else None
    for name, tensor in state.items():
        if not tensor.is_floating_point() or (isinstance(wanted, torch.dtype) and tensor.dtype != wanted):
            raise CheckpointError(
                f"{path}: tensor '{name}' is {tensor.dtype} but config.json's dtype is {declared or 'a float type'}"
            )


def read_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())
