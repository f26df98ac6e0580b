"""Run folders: one per resolved training config, with provenance, atomic checkpoints and reuse (docs/design.md §8).

A run is identified by the hash of its resolved config (:func:`config_hash`), so the same stage asked for by two
recipes, or by the same recipe twice, lands in the same folder and is trained once. Layout of
``<runs root>/<hash>/``::

    config.json / config.yaml   the resolved config (hashed part) and cosmetic labels (recipe / stage names)
    metrics.jsonl               one JSON object per logged step, eval lines carry an "eval" key
    checkpoints/last.pt         the latest resumable state (model, optimiser, step, RNG, loss-module params)
    model/                      the final student as an open_clip ``local-dir:`` folder
    eval.json                   final evaluation
    provenance.json             git commit, package versions, host, device, seed, wall time, command
    FINISHED                    written last; a folder with it is complete and is reused instead of retrained
    .lock                       an flock held while a process works on the run (parallel arms share prerequisites)

Every file is written to a temporary name and renamed into place, so a run killed at any instant leaves either
the old or the new version of a file, never half of one, and never a FINISHED marker without its results.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch
import yaml

from . import faults
from .errors import TinyCLIPError

RUNS_ROOT_ENV = "TINYCLIP_RUNS_ROOT"
HASH_LENGTH = 12
FINISHED = "FINISHED"
_PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "webdataset", "clip-benchmark", "tinyclip-repro")


def project_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml`` above the package), or the working directory."""
    candidate = Path(__file__).resolve().parent.parent
    return candidate if (candidate / "pyproject.toml").is_file() else Path.cwd()


def runs_root() -> Path:
    """``$TINYCLIP_RUNS_ROOT`` if set (tests, scratch experiments), else ``<project root>/runs``."""
    env = os.environ.get(RUNS_ROOT_ENV)
    return Path(env) if env else project_root() / "runs"


# ----------------------------------------------------------------------------------------------- hashing
def canonical_json(obj: Any) -> str:
    """The one text a config hashes as: sorted keys, no spaces, floats by ``repr`` (json's default)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of :func:`canonical_json` — the run's folder name."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:HASH_LENGTH]


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (teacher weights enter a run's identity by content, not by path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- atomic IO
@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``; on success it is fsynced and renamed over ``path``
    (atomic on POSIX), on any error removed, so readers only ever see a complete file or the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp creates 0600; results and reports are meant to be shared
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        faults.point("write", str(path))     # complete in its temporary file, not yet in place
        os.replace(tmp, path)
        faults.point("written", str(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files :func:`atomic_file` left beside ``path`` when a writer was killed mid-write. Only
    where no other writer of ``path`` can be running: a live writer's temporary file would go too."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_file`."""
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place (the old one, if any, is removed first)."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


# ----------------------------------------------------------------------------------------------- provenance
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(seed: int, device: str, command: list[str] | None = None) -> dict[str, Any]:
    """Where and with what a run was made: git commit (and whether the tree was dirty), versions, host, device."""
    versions = {}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    # reports/ is left out: rendering one report changes it, which says nothing about the code that made the next
    status = _git("status", "--porcelain", "--", ".", ":(exclude)reports")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "packages": versions,
        "python": platform.python_version(),
        "host": platform.node(),
        "platform": platform.platform(),
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "command": command if command is not None else sys.argv,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------- run folders
class Run:
    """One run folder. Cheap to construct; nothing touches the disk until a method is called."""

    def __init__(self, config: dict[str, Any], root: Path | None = None, labels: dict[str, Any] | None = None):
        self.config = config
        self.hash = config_hash(config)
        self.labels = labels or {}
        self.dir = (root or runs_root()) / self.hash

    # paths -----------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def finished_path(self) -> Path:
        return self.dir / FINISHED

    def is_finished(self) -> bool:
        return self.finished_path.is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    # lifecycle -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on the run while working on it. A second process asking for the same run
        (a parallel arm sharing a teacher) waits here and then finds the run finished. The kernel drops the lock
        when its holder dies, even by SIGKILL."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TinyCLIPError(f"cannot write the run folder {self.dir} ({exc.strerror}); point TINYCLIP_RUNS_ROOT "
                                "at a writable folder") from None
        with open(self.dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def reset(self) -> None:
        """Remove everything but the lock file (``--force``, or a fresh start over an interrupted run)."""
        if not self.dir.exists():
            return
        for child in self.dir.iterdir():
            if child.name == ".lock":
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def start(self, seed: int, device: str, command: list[str] | None = None) -> None:
        """Write the config and the provenance of a fresh (or resumed) attempt; drop what a killed attempt left
        in temporary files (the caller holds the run's lock, so no other writer is using them)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.dir.glob(".*.tmp"), *self.checkpoint_path.parent.glob(".*.tmp"),
                      *self.model_dir.glob("*.tmp")]:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        atomic_write_json(self.dir / "config.json", {"hash": self.hash, "labels": self.labels, "config": self.config})
        atomic_write_text(self.dir / "config.yaml",
                          yaml.safe_dump({"hash": self.hash, "labels": self.labels, "config": self.config},
                                         sort_keys=False))
        record = provenance(seed, device, command)
        previous = self.read_json("provenance.json")
        if previous is not None:  # a resumed run keeps the history of its attempts
            record["attempts"] = previous.get("attempts", []) + [previous.get("started")]
        self._t0 = time.time()
        atomic_write_json(self.dir / "provenance.json", record)

    def finish(self, summary: dict[str, Any]) -> None:
        """Complete the provenance (wall time) and write the FINISHED marker — always the last file written."""
        record = self.read_json("provenance.json") or {}
        record["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        record["wall_s"] = round(time.time() - getattr(self, "_t0", time.time()), 3)
        atomic_write_json(self.dir / "provenance.json", record)
        atomic_write_json(self.finished_path, summary)

    def summary(self) -> dict[str, Any]:
        """The FINISHED marker's content (final metrics, parameter counts) with the run's current paths (a runs
        folder may have been moved or copied since)."""
        data = self.read_json(FINISHED)
        if data is None:
            raise TinyCLIPError(f"run {self.dir} is not finished; train it first (or pass --resume)")
        return {**data, "run_dir": str(self.dir), "model_dir": str(self.model_dir)}

    # files -----------------------------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        path = self.dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.dir / name, obj)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line per call. A line cut by a crash is dropped on resume (:meth:`truncate_metrics`)."""
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # the torn last line of a killed run
                break
        return records

    def truncate_metrics(self, next_step: int) -> None:
        """Keep only lines of steps before ``next_step``: a resumed run re-logs the steps after its checkpoint,
        so the file ends up the same as an uninterrupted run's."""
        kept = [r for r in self.read_metrics() if r.get("step", -1) < next_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any]:
        if not self.has_checkpoint():
            raise TinyCLIPError(f"no checkpoint in {self.dir}; start the run without --resume")
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 — any unreadable file is the same user-facing problem
            raise TinyCLIPError(f"checkpoint {self.checkpoint_path} is unreadable ({type(exc).__name__}); "
                                "rerun with --force to start the run over") from exc
