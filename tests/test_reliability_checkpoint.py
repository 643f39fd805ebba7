"""Issue 16, section 2 (untrusted or malformed model folders) and the save/convert halves of section 1.

``load_pruned`` checks config.json's sizes, pruning_plan.json and every tensor before any weight is
used; each malformed folder below is one CheckpointError naming the file or field."""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from rkuprune import load_pruned
from rkuprune.errors import CheckpointError, ConfigError, PlanError
from rkuprune.models import loading
from rkuprune.models.adapters import adapter_for
from rkuprune.models.io import save_pruned
from rkuprune.models.loading import ModelConfig, check_model_config
from rkuprune.models.plan import PruningPlan
from rkuprune.models.surgery import apply_plan
from tests.conftest import save_random_pruned, stub_gguf_package, tiny


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-uniform pruned tiny Llama with its plan and tokenizer, as save_pruned writes it."""
    return save_random_pruned(tmp_path_factory.mktemp("saved") / "model")


def edit_json(file: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = json.loads((folder / file).read_text())
        change(data)
        (folder / file).write_text(json.dumps(data))

    return apply


def edit_tensors(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        state = load_file(str(folder / "model.safetensors"))
        change(state)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    return apply


def truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def first_layer(plan: dict) -> dict:
    return plan["layers"][0]


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "plan missing": (lambda f: (f / "pruning_plan.json").unlink(), "pruning_plan.json: missing"),
    "plan not JSON": (lambda f: (f / "pruning_plan.json").write_text("{"), "pruning_plan.json: not readable JSON"),
    "fractional indices": (
        edit_json(
            "pruning_plan.json", lambda p: first_layer(p).update(kv_heads=[0.1, 0.9][: len(first_layer(p)["kv_heads"])])
        ),
        "layer 0: kv_heads must be integers, got 0.1",
    ),
    "unsorted indices": (
        edit_json("pruning_plan.json", lambda p: first_layer(p)["mlp_channels"].reverse()),
        "layer 0: mlp_channels must be sorted and unique",
    ),
    "negative index": (
        edit_json("pruning_plan.json", lambda p: first_layer(p)["mlp_channels"].__setitem__(0, -1)),
        "layer 0: mlp_channels index -1 is negative",
    ),
    "index out of range": (
        edit_json("pruning_plan.json", lambda p: first_layer(p)["mlp_channels"].__setitem__(-1, 10_000)),
        "layer 0: mlp_channels index 10000 is out of range (the layer has 96)",
    ),
    "plan contradicts the sizes": (
        edit_json("pruning_plan.json", lambda p: first_layer(p)["mlp_channels"].pop()),
        "pruning_plan.json: layer 0 keeps",
    ),
    "base model not a string": (
        edit_json("pruning_plan.json", lambda p: p.update(base_model=5)),
        "pruning_plan.json: base_model must be a string",
    ),
    "size given as a string": (
        edit_json("config.json", lambda c: c["rkuprune_layers"][1].update(intermediate_size="96")),
        "config.json: rkuprune_layers[1].intermediate_size is '96'; it must be a positive integer",
    ),
    "zero KV heads": (
        edit_json("config.json", lambda c: c["rkuprune_layers"][0].update(num_key_value_heads=0)),
        "rkuprune_layers[0].num_key_value_heads is 0",
    ),
    "size field missing": (
        edit_json("config.json", lambda c: c["rkuprune_layers"][2].pop("num_attention_heads")),
        "rkuprune_layers[2].num_attention_heads is None",
    ),
    "truncated weights": (truncate, "model.safetensors: not a readable safetensors file"),
    "stray weight file": (
        lambda f: shutil.copy(f / "model.safetensors", f / "extra.safetensors"),
        "extra.safetensors: not part of the saved checkpoint",
    ),
    "tie_word_embeddings flipped": (
        edit_json("config.json", lambda c: c.update(tie_word_embeddings=True)),
        "config.json: tie_word_embeddings is true but the weights hold a separate lm_head.weight",
    ),
    "one tensor of another dtype": (
        edit_tensors(lambda s: s.update({"model.norm.weight": s["model.norm.weight"].half()})),
        "tensor 'model.norm.weight' is torch.float16 but config.json's dtype is float32",
    ),
    "auto_map in config.json": (
        edit_json("config.json", lambda c: c.update(auto_map={"AutoModelForCausalLM": "evil.Model"})),
        "config.json: 'auto_map' asks to run the folder's own Python code",
    ),
    "auto_map in tokenizer_config.json": (
        edit_json("tokenizer_config.json", lambda c: c.update(auto_map={"AutoTokenizer": ["evil.Tok", None]})),
        "tokenizer_config.json: 'auto_map' asks to run the folder's own Python code",
    ),
}


def test_an_intact_folder_loads(saved: Path, tmp_path) -> None:
    model, tokenizer = load_pruned(shutil.copytree(saved, tmp_path / "m"))
    assert (
        tokenizer is not None
        and model.config.rkuprune_layers == json.loads((saved / "config.json").read_text())["rkuprune_layers"]
    )


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_malformed_folder_is_one_checkpoint_error_naming_the_file_or_field(saved: Path, tmp_path, damage) -> None:
    folder = shutil.copytree(saved, tmp_path / "m")
    mutate, message = DAMAGE[damage]
    mutate(folder)
    with pytest.raises(CheckpointError) as info:
        load_pruned(folder)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_fractional_plan_indices_fail_validation() -> None:
    structures = adapter_for(tiny("tiny-llama").model).structures()
    plan = PruningPlan.dense(structures)
    plan.layers[0].mlp_channels = [0.1, 0.4, 0.9]  # type: ignore[list-item]
    with pytest.raises(PlanError, match="layer 0: mlp_channels must be integers, got 0.1"):
        plan.validate(structures)


def test_a_model_folder_asking_for_custom_code_is_refused_before_loading(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoConfig": "x.Y"}}))
    cfg = ModelConfig(name="m", source="hub", path=str(tmp_path), gguf_package=None, gguf_file=None)
    with pytest.raises(ConfigError, match=r"^model\.path: .*config\.json: 'auto_map'"):
        check_model_config(cfg)


def test_an_interrupted_save_keeps_the_old_folder(saved: Path, tmp_path, monkeypatch) -> None:
    target = shutil.copytree(saved, tmp_path / "model")
    before = (target / "model.safetensors").read_bytes()
    loaded = tiny("tiny-llama", seed=1)
    plan = PruningPlan.dense(adapter_for(loaded.model).structures(), base_model="tiny")
    apply_plan(loaded.model, plan, "slice")
    real_rename = pathlib.Path.rename
    calls = []

    def interrupted_once(self: Path, dest: Path) -> Path:
        if Path(dest) == target and not calls:  # the moment the new folder would be renamed in
            calls.append(self)
            raise KeyboardInterrupt
        return real_rename(self, dest)

    monkeypatch.setattr(pathlib.Path, "rename", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(loaded.model, None, plan, target)
    monkeypatch.undo()
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or set-aside folder left
    save_pruned(loaded.model, None, plan, target)  # and an uninterrupted save replaces it
    assert (target / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_interrupted_gguf_conversion_leaves_no_staging_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))

    class InterruptedTokenizer:
        def save_pretrained(self, folder: Path) -> None:
            raise KeyboardInterrupt  # after the weights are written: the costly half-folder

    stub_gguf_package(tmp_path, monkeypatch, InterruptedTokenizer())
    with pytest.raises(KeyboardInterrupt):
        loading.converted_gguf_folder(ModelConfig())
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_load_pruned_never_trusts_remote_code(saved: Path, tmp_path, monkeypatch) -> None:
    seen: list[object] = []
    real = loading.AutoConfig.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(cls: type, *args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("trust_remote_code"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", classmethod(spy))
    load_pruned(shutil.copytree(saved, tmp_path / "m"))
    assert seen and all(value is False for value in seen)


def test_a_flipped_byte_in_a_weight_file_is_named_by_its_digest(saved: Path, tmp_path) -> None:
    """Saved models carried no checksum: a bit flip (or a same-shape swap) in the weights loaded silently."""
    plan = json.loads((saved / "pruning_plan.json").read_text())
    digests = plan["metadata"]["weights_sha256"]
    assert sorted(digests) == ["model.safetensors"] and len(digests["model.safetensors"]) == 64
    folder = shutil.copytree(saved, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # a tensor value, not the header: names, shapes and dtypes all still agree
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_pruned(folder)
    message = str(info.value)
    assert message.startswith(f"{weights}: sha256 ") and "recorded in pruning_plan.json" in message
    assert "\n" not in message
