"""Small helpers shared by the stages: atomic writes, seeding, hashing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class StageError(RuntimeError):
    """A stage cannot read or write a file (not params, not the dataset); the message names
    the file or folder and what to do."""


# No space left on the device, or over the user's disk quota.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# Targets of the atomic_path blocks now open, outermost first: a full disk is reported by the
# outermost one, the stage's output, not by a file inside its temporary folder.
_OPEN_TARGETS: list[Path] = []


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success.

    Works for files and directories, so an interrupted stage never leaves half an output
    where the previous complete one was. A previous directory is moved aside (into the
    temporary folder, which is then deleted) rather than deleted first, so no moment
    leaves neither the old nor the new output. A full disk raises StageError.
    """
    target = Path(target)
    tmp_parent = _make_temp_dir(target)
    tmp = tmp_parent / target.name
    _OPEN_TARGETS.append(target)
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = tmp_parent / f"{target.name}.previous"
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)  # put the previous output back
                raise
        else:
            os.replace(tmp, target)
    except OSError as err:
        if err.errno in _DISK_FULL and _OPEN_TARGETS[0] is target:
            raise StageError(
                f"{target}: the disk filled up while writing it ({err.strerror}); the previous "
                f"{target.name} (if any) is untouched. Free space on the disk holding "
                f"{target.parent.resolve()} and run the stage again."
            ) from err
        raise
    finally:
        _OPEN_TARGETS.pop()
        shutil.rmtree(tmp_parent, ignore_errors=True)


def _make_temp_dir(target: Path) -> Path:
    """A fresh hidden folder beside `target` (same file system, so os.replace is atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except PermissionError as err:
        raise StageError(not_writable_message(target, err)) from err


def not_writable_message(target: Path, err: OSError) -> str:
    folder = _nearest_existing(target.parent)  # the folder the write is refused in
    return (
        f"{target}: cannot write it, the folder {folder} is not writable ({err.strerror}). "
        "Make it writable (e.g. `chmod u+w` it or fix its owner), or run from a copy of the "
        "repository you can write to."
    )


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(*targets: str | Path) -> None:
    """Fail now, before a long stage, if an output cannot be written where it belongs.

    Creates (and removes) a temporary folder in the output's folder, or the nearest folder
    above it that exists (nothing is left behind, not even the output's parent folder): the
    real test, as os.access says yes to root and no on some network file systems.
    """
    for target in map(Path, targets):
        folder = _nearest_existing(target.parent)
        try:
            probe = tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder)
        except PermissionError as err:
            raise StageError(not_writable_message(target, err)) from err
        os.rmdir(probe)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def md5_file(path: str | Path) -> str:
    """The md5 of a file, as DVC hashes it (the index and prepare record these)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def md5_listing(root: Path) -> str:
    """`md5sum`-style lines (`<md5>  <path relative to root>`) of every file under `root`,
    sorted: a small file that changes whenever any file of the folder does."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return "".join(f"{md5_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    import torch

    # cuBLAS is deterministic only with a fixed workspace (CUDA docs); set before its first
    # use, and only where the user has not chosen one.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def train_info(seconds: float, device, corpus_size: int, objects: int, losses: dict) -> dict:
    """Where and how long a foundation model trained: steps run and final losses."""
    import torch

    return {
        "train_seconds": round(seconds, 1),
        "train_device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "corpus_size": corpus_size,
        "objects": objects,
        "steps": {name: len(values) for name, values in losses.items()},
        "final_losses": {name: float(np.mean(values[-100:])) for name, values in losses.items()},
    }


def remove_stale_temporaries(target: str | Path) -> None:
    """Delete the temporary folders atomic_path left beside `target` in a process that was
    killed (SIGKILL, a power cut: no `finally` runs). Call it when a stage starts, before its
    own atomic_path: no other process writes the same output at the same time."""
    target = Path(target)
    for leftover in target.parent.glob(f".{target.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
