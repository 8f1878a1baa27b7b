"""The stages of dvc.yaml, read wherever a list of them is needed (the CLI, the benchmarks,
the tests), so that dvc.yaml stays the one table of contents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

# The dvc.yaml beside this source tree (src/ddb/dvcfile.py -> the project root): the one its
# code was written for, wherever the command runs (a test's scratch folder has none).
DVC_YAML = Path(__file__).resolve().parents[2] / "dvc.yaml"


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]  # paths as written (a `${data.root}` stays unresolved)
    params: tuple[str, ...]  # params.yaml keys or sections, as listed
    outs: tuple[str, ...]
    frozen: bool  # a one-off whose outputs are committed: `dvc repro` never runs it


def read_stages(path: Path = DVC_YAML) -> dict[str, Stage]:
    """dvc.yaml's stages by name, in the file's order."""
    try:
        stages = yaml.safe_load(path.read_text())["stages"]
    except (OSError, KeyError, TypeError) as err:
        raise FileNotFoundError(
            f"{path}: no dvc.yaml with a `stages:` section (run from the repository root)"
        ) from err
    return {name: _stage(name, entry) for name, entry in stages.items()}


def pipeline_stages(path: Path = DVC_YAML) -> list[str]:
    """The stages `dvc repro` runs (every stage but the frozen one-offs), in dvc.yaml's order,
    which a test keeps an order where each stage follows the stages it depends on."""
    return [name for name, stage in read_stages(path).items() if not stage.frozen]


def covers(listed: str, key: str) -> bool:
    """Whether a params entry of dvc.yaml covers `key`: itself or a section above it."""
    return key == listed or key.startswith(f"{listed}.")


def stages_listing(key: str, stages: dict[str, Stage]) -> list[str]:
    """The stages whose params entries cover `key` (DVC re-runs them when it changes)."""
    return [name for name, stage in stages.items() if any(covers(p, key) for p in stage.params)]


def _stage(name: str, entry: dict) -> Stage:
    return Stage(
        name=name,
        cmd=entry["cmd"],
        deps=tuple(entry.get("deps", [])),
        params=tuple(_param_keys(entry.get("params", []))),
        outs=tuple(_paths(entry.get("outs", [])) + _paths(entry.get("metrics", []))),
        frozen=bool(entry.get("frozen", False)),
    )


def _param_keys(entries: list) -> list[str]:
    """Keys of params.yaml; a `{file: [keys]}` entry of another params file is left out,
    and a `{params.yaml: [keys]}` one counts as its keys."""
    keys: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            keys.append(entry)
        else:
            keys.extend(entry.get("params.yaml") or [])
    return keys


def _paths(entries: list) -> list[str]:
    """Out paths: an entry is a path or `{path: {cache: false, ...}}`."""
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]
