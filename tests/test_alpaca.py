"""``alpaca``: LLM-Pruner's recovery rows (post_training.py): its Alpaca prompt + output + EOS, cut at
``seqlen``, the loss on the response only, its validation rows held out; offline without the file is
one line naming data.root before the model loads; a recovery run trains on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from rkuprune.data.alpaca import AlpacaConfig, alpaca_prompt
from rkuprune.data.calibration import CALIBRATION_SOURCES
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.recovery import RECOVERY
from rkuprune.recovery.lora import LoRAConfig
from tests.conftest import tiny
from tests.test_app import run_cli

ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Summarise the text.", "input": "Cats sleep a lot. They hunt at night.", "output": "Cats rest."},
    {"instruction": "Say {x} literally.", "input": "", "output": "{x}"},
]
# The reference's template (LLMPruner/utils/prompter.py, alpaca_template), written out by hand.
WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\nTranslate to French.\n\n### Input:\n"
    "Good morning\n\n### Response:\n"
)
WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nName a colour.\n\n### Response:\n"
)


def filler(n: int) -> list[dict[str, str]]:
    return [{"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(n)]


def write_alpaca(root: Path, rows: list[dict[str, str]]) -> DataConfig:
    (root / "alpaca").mkdir(parents=True, exist_ok=True)
    (root / "alpaca" / "alpaca_data_cleaned.json").write_text(json.dumps(rows), encoding="utf-8")
    return DataConfig(root=str(root))


def build(data: DataConfig, **overrides: object):
    """The source (no hold-out, no token limit, byte tokens long enough for whole rows) and its set."""
    source = CALIBRATION_SOURCES.build(
        AlpacaConfig(**{"val_set_size": 0, "num_tokens": 10**6, "seqlen": 1024, **overrides})
    )
    source.check(data)
    return source, source.build(tiny("tiny-llama").tokenizer, data)


def real_rows(calibration) -> list[tuple[list[int], torch.Tensor]]:
    """Each row's real token ids and its loss mask over them."""
    return [
        (ids[real.bool()].tolist(), mask[real.bool()])
        for ids, mask, real in zip(
            calibration.input_ids, calibration.loss_mask, calibration.attention_mask, strict=True
        )
    ]


def test_the_prompt_is_the_references_template_with_and_without_input() -> None:
    assert alpaca_prompt("Translate to French.", "Good morning") == WITH_INPUT
    assert alpaca_prompt("Name a colour.", "") == WITHOUT_INPUT  # an empty input takes the other template
    assert alpaca_prompt("Name a colour.") == WITHOUT_INPUT
    assert alpaca_prompt("Say {x} literally.").endswith("### Instruction:\nSay {x} literally.\n\n### Response:\n")


def test_each_row_is_prompt_output_eos_with_the_loss_on_the_response_and_eos(tmp_path) -> None:
    data = write_alpaca(tmp_path, ROWS)
    _, calibration = build(data)
    tokenizer = tiny("tiny-llama").tokenizer
    assert len(calibration) == len(ROWS) and calibration.provenance["rows_available"] == len(ROWS)
    expected = {}  # the prompt as the test above pins it, then the output and EOS
    for row in ROWS:
        prompt = alpaca_prompt(row["instruction"], row["input"])
        expected[tuple(tokenizer(prompt + row["output"]).input_ids + [tokenizer.eos_token_id])] = row["output"]
    for ids, mask in real_rows(calibration):
        assert tuple(ids) in expected
        # the loss counts exactly the response and EOS (byte tokens, so the response is a clean suffix)
        start = mask.tolist().index(True)
        assert ids[start:] == tokenizer(expected[tuple(ids)]).input_ids + [tokenizer.eos_token_id]
        assert mask[start:].all()
    assert calibration.provenance["loss_tokens"] == sum(len(r["output"]) + 1 for r in ROWS)


def test_train_on_inputs_counts_every_token(tmp_path) -> None:
    _, calibration = build(write_alpaca(tmp_path, ROWS), train_on_inputs=True)
    assert torch.equal(calibration.loss_mask, calibration.attention_mask.bool())


def test_rows_are_cut_at_seqlen_without_eos_and_prompts_that_fill_it_are_dropped(tmp_path) -> None:
    long_output = {"instruction": "Name a colour.", "input": "", "output": "blue " * 60}
    long_prompt = {"instruction": "x" * 300, "input": "", "output": "y"}
    short = ROWS[2]
    data = write_alpaca(tmp_path, [long_output, long_prompt, short])
    tokenizer = tiny("tiny-llama").tokenizer
    seqlen = len(WITHOUT_INPUT) + 20  # the template fits; 20 response tokens of the long output do
    _, calibration = build(data, seqlen=seqlen)
    assert calibration.provenance["rows_without_response"] == 1  # the reference would mask all of it
    rows = {tuple(ids): mask for ids, mask in real_rows(calibration)}
    cut = tokenizer(WITHOUT_INPUT + long_output["output"]).input_ids[:seqlen]  # no EOS after a cut
    assert rows[tuple(cut)].sum() == 20 and rows[tuple(cut)][-20:].all()
    whole = tokenizer(WITHOUT_INPUT + short["output"]).input_ids + [tokenizer.eos_token_id]
    assert tuple(whole) in rows and len(rows) == 2


def test_the_held_out_rows_are_the_references_validation_split(tmp_path) -> None:
    """post_training.py holds out train_test_split(test_size=val_set_size, shuffle=True, seed=42)['test']."""
    rows = ROWS + filler(45)
    data = write_alpaca(tmp_path, rows)
    source = CALIBRATION_SOURCES.build(AlpacaConfig(val_set_size=10))
    reference = Dataset.from_list(rows).train_test_split(test_size=10, shuffle=True, seed=42)
    assert sorted(r["instruction"] for r in source.train_rows(data)) == sorted(reference["train"]["instruction"])
    with pytest.raises(ConfigError, match=r"^calibration\.val_set_size: holding out 50 validation rows leaves none"):
        CALIBRATION_SOURCES.build(AlpacaConfig(val_set_size=50)).train_rows(data)


@pytest.mark.parametrize("root", [None, "empty"])
def test_offline_without_the_file_is_one_line_naming_data_root(root, tmp_path) -> None:
    data = DataConfig(root=str(tmp_path) if root else None)
    with pytest.raises(ConfigError, match=r"^data\.root: the alpaca source needs alpaca/alpaca_data_cleaned\.json"):
        CALIBRATION_SOURCES.build(AlpacaConfig()).check(data)
    with pytest.raises(ConfigError, match=r"^data\.root: the alpaca source needs"):
        RECOVERY.build(LoRAConfig(source="alpaca")).check(data)


def test_a_recovery_source_without_the_file_fails_in_one_line_before_loading(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["model=tiny-llama", "logger=none", "recovery=lora_llm_pruner", f"hydra.run.dir={run_dir}"]
    code, _, err = run_cli(argv, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert lines == [lines[0]] and lines[0].startswith("error: data.root: the alpaca source needs"), err
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
def test_a_recovery_run_on_alpaca_writes_both_metric_sets(tmp_path, monkeypatch, capsys) -> None:
    # the default hold-out (2,000 rows, as the reference) needs more rows than the five above
    data = write_alpaca(tmp_path / "data", ROWS + filler(2000))
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        [
            "model=tiny-llama",
            "scorer=magnitude",
            "pruning.sparsity=0.3",
            "recovery=lora",
            "recovery.source=alpaca",
            "recovery.steps=3",
            "recovery.batch_size=2",
            "recovery.seqlen=256",
            "recovery.learning_rate=1e-2",
            f"data.root={data.root}",
            "logger=none",
            "benchmark.tasks.ppl_pydoc.seqlen=64",
            "benchmark.tasks.synthetic=null",
            "benchmark.speed.enabled=false",
            f"hydra.run.dir={run_dir}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    key = "ppl/pydoc@64"
    assert results["metrics"][key] != results["metrics_before_recovery"][key]
    provenance = results["recovery"]["data"]
    assert (provenance["source"], provenance["split"], provenance["held_out"]) == ("alpaca", "train", 2000)
    assert provenance["origin"] == str(tmp_path / "data" / "alpaca" / "alpaca_data_cleaned.json")
    assert provenance["rows_available"] == 5 and provenance["loss_tokens"] < provenance["num_tokens"]
    assert len(results["recovery"]["losses"]) == 3
