"""``python -m rkuprune``: the Hydra app. Configuration errors print one line and exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rkuprune.config import register_configs, to_container
from rkuprune.errors import RkupruneError
from rkuprune.pipeline import run
from rkuprune.report.summary import print_summary

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> float | None:
    """One job. In a sweep a failed job is recorded (results.json says why) and the sweep goes on."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        results = run(OmegaConf.to_object(cfg), run_dir, to_container(cfg))
    except (RkupruneError, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(2)
    print_summary(results, run_dir)
    return results["pruning"].get("measured_sparsity")


def one_line(exc: BaseException) -> str:
    """A config error as one line naming the field."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        options = ", ".join(sorted(o for o in exc.options or [] if not o.endswith("_schema") and o[:5] != "base_"))
        return f"{group}: no option '{option}'; choose one of: {options}"
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "config"
        return f"{key}: {str(exc).splitlines()[0]}"
    if isinstance(exc, ConfigCompositionException) and exc.__cause__ is not None:
        return one_line(exc.__cause__)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main() -> None:
    # Let exceptions reach us instead of Hydra's multi-line report, so config errors fit one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except (RkupruneError, ConfigCompositionException, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
