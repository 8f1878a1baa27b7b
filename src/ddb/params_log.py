"""Which params keys a stage reads, recorded while it runs (tests/test_stage_params.py checks
them against the stage's `params` in dvc.yaml).

Only when the environment sets DDB_PARAMS_LOG to a folder: the CLI then hands the stage a
copy of its Config whose sections log every field read, and at exit appends the keys to
<folder>/<stage>.txt. Without it nothing here runs, so production reads plain dataclasses.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

ENV = "DDB_PARAMS_LOG"


def recording(config: Any, stage: str) -> Any:
    """`config` as a recording copy when DDB_PARAMS_LOG is set, else `config` itself."""
    folder = os.environ.get(ENV)
    if not folder:
        return config
    reads: set[str] = set()
    atexit.register(_append, Path(folder) / f"{stage}.txt", reads)
    return recorded(config, "", reads)


def recorded(value: Any, prefix: str, reads: set[str]) -> Any:
    """A copy of a (nested) config dataclass whose field reads add '<prefix><field>' to
    `reads`. Each section becomes a subclass of its own class: `dataclasses.replace`,
    `asdict` and isinstance still work, and a replaced copy keeps recording."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    values = {
        f.name: recorded(getattr(value, f.name), f"{prefix}{f.name}.", reads)
        for f in dataclasses.fields(value)
    }
    # only values count as reads: reaching a section on the way to its keys reads none
    leaves = {
        name: f"{prefix}{name}" for name, v in values.items() if not dataclasses.is_dataclass(v)
    }
    return _recording_class(type(value), leaves, reads)(**values)


# set while a section validates itself (each time one is built, replaced copies too): what
# the checks look at is not what the stage reads
_validating: ContextVar[bool] = ContextVar("validating", default=False)


def _recording_class(base: type, keys: dict[str, str], reads: set[str]) -> type:
    def __getattribute__(self, name: str) -> Any:  # noqa: N807 (the special method's name)
        if name in keys and not _validating.get():
            reads.add(keys[name])
        return base.__getattribute__(self, name)

    def validate(self) -> None:
        token = _validating.set(True)
        try:
            base.validate(self)
        finally:
            _validating.reset(token)

    namespace: dict[str, Any] = {"__getattribute__": __getattribute__}
    if hasattr(base, "validate"):
        namespace["validate"] = validate
    return type(base.__name__, (base,), namespace)


def _append(path: Path, reads: set[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.writelines(f"{key}\n" for key in sorted(reads))
