"""``python -m rkuprune``: the Hydra app. Configuration errors print one line and exit 2.

A run holds a lock on its folder (a second live run there is refused), turns SIGTERM into a recorded
failure like Ctrl-C, and a sweep exits non-zero when any of its jobs failed, wherever the launcher ran
them (in this process, in submitit's local processes or on SLURM nodes): each job writes its outcome
into its folder, tagged with the sweep's id, and the launching process reads them back.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rkuprune.config import register_configs, to_container
from rkuprune.errors import ConfigError, RkupruneError
from rkuprune.pipeline import run
from rkuprune.report.summary import print_summary
from rkuprune.tracking.atomic import write_json

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
LOCK_FILE = ".rkuprune.lock"
OUTCOME_FILE = ".rkuprune.outcome-{sweep}.json"  # one per sweep id: two sweeps over one folder never share one
SWEEP_ID = "RKUPRUNE_SWEEP_ID"

register_configs()


class Terminated(BaseException):
    """SIGTERM (SLURM time limit, ``kill``, container stop), raised like KeyboardInterrupt for SIGINT."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self) -> None:
        super().__init__("the run received SIGTERM (time limit, kill or container stop)")


class SweepOutcome(Callback):
    """Hydra callback (conf/config.yaml) in the process that launches a sweep: give the sweep an id that
    its jobs inherit through the environment (SLURM and submitit pass it on), then read back the outcome
    every job of this id wrote into its folder. A job killed before it could finish stays "running"."""

    jobs: list[dict[str, str]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        os.environ[SWEEP_ID] = uuid.uuid4().hex
        SweepOutcome.jobs = []

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        sweep_id = os.environ.pop(SWEEP_ID, None)
        if sweep_id is None:
            return
        for path in sorted(Path(config.hydra.sweep.dir).rglob(OUTCOME_FILE.format(sweep=sweep_id))):
            try:
                outcome = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                outcome = {"status": "unreadable", "error": f"{path.name}: {type(exc).__name__}"}
            SweepOutcome.jobs.append({**outcome, "dir": str(path.parent)})

    @classmethod
    def failed(cls) -> list[dict[str, str]]:
        return [job for job in cls.jobs if job["status"] != "completed"]


def record_outcome(run_dir: Path, status: str, error: str | None = None) -> None:
    """A sweep job's outcome for the launching process (``SweepOutcome``); nothing outside a sweep."""
    if SWEEP_ID in os.environ:
        write_json(run_dir / OUTCOME_FILE.format(sweep=os.environ[SWEEP_ID]), {"status": status, "error": error})


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig) -> float | None:
    """One job. In a sweep a failed job is recorded (results.json and its outcome say why) and the sweep goes on."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    record_outcome(run_dir, "running")
    try:
        with run_lock(run_dir), sigterm_raises():
            results = run(OmegaConf.to_object(cfg), run_dir, to_container(cfg))
    except (RkupruneError, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        record_outcome(run_dir, "failed", one_line(exc))
        if multirun:
            return None
        sys.exit(2)
    except Exception as exc:
        record_outcome(run_dir, "failed", f"{type(exc).__name__}: {one_line(exc)}")
        if not multirun:
            raise
        print(f"error: {run_dir}: {type(exc).__name__}: {one_line(exc)} (traceback in results.json)", file=sys.stderr)
        return None
    except BaseException as exc:  # SIGTERM or Ctrl-C: recorded, then the job stops as before
        record_outcome(run_dir, "failed", one_line(exc))
        raise
    record_outcome(run_dir, "completed")
    print_summary(results, run_dir)
    return results["pruning"].get("measured_sparsity")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder so that two live runs never write into one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                "hydra.run.dir", f"{run_dir} is in use by another live run (pid {holder}); choose another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While a run is in progress, SIGTERM raises ``Terminated`` so the run is recorded as failed."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def one_line(exc: BaseException) -> str:
    """A config error as one line naming the field."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        options = ", ".join(sorted(o for o in exc.options or [] if not o.endswith("_schema") and o[:5] != "base_"))
        return f"{group}: no option '{option}'; choose one of: {options}"
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "config"
        if "is not in struct" in str(exc):
            return f"{key}: this preset does not set it; add it with +{key}=VALUE (or check the spelling)"
        return f"{key}: {str(exc).splitlines()[0]}"
    if isinstance(exc, ConfigCompositionException) and exc.__cause__ is not None:
        return one_line(exc.__cause__)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def override_problem(exc: OverrideParseException) -> str:
    """A command-line override Hydra cannot parse, in one line; a word without ``=`` is most often the
    rest of a value with unquoted spaces (``model.name=my model``)."""
    if "=" not in exc.override:
        return (
            f"override '{exc.override}' is not KEY=VALUE; a value with spaces must be quoted: 'model.name=\"my model\"'"
        )
    return f"override '{exc.override}': {' '.join(str(exc.message).split())}"


def main() -> None:
    # Let exceptions reach us instead of Hydra's multi-line report, so config errors fit one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    SweepOutcome.jobs = []
    try:
        app()
    except (RkupruneError, ConfigCompositionException, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except OverrideParseException as exc:
        print(f"error: {override_problem(exc)}", file=sys.stderr)
        sys.exit(2)
    except PermissionError as exc:  # Hydra writes .hydra/ into the run folder before the app starts
        print(
            f"error: hydra.run.dir: cannot write {exc.filename or 'into the run folder'} ({exc.strerror}); "
            "choose a writable folder",
            file=sys.stderr,
        )
        sys.exit(2)
    except FileExistsError as exc:  # Hydra creates the run folder before the app starts
        print(f"error: hydra.run.dir: {exc.filename} is a file, not a folder; choose another path", file=sys.stderr)
        sys.exit(2)
    except Terminated as exc:
        print(f"error: {exc}; results.json records the run as failed", file=sys.stderr)
        sys.exit(Terminated.exit_code)
    failed = SweepOutcome.failed()
    if failed:
        first = failed[0]
        print(
            f"error: {len(failed)} of {len(SweepOutcome.jobs)} sweep jobs failed or did not finish "
            f"(first: {first['dir']}: {first['error'] or first['status']}; each job's folder says why)",
            file=sys.stderr,
        )
        sys.exit(1)
