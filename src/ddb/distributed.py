"""The processes a stage runs as: one (`python -m ddb <stage>`) or several, when launched by
`accelerate launch` or `torchrun`, which set the process group's environment.

Accelerate's `PartialState` reads that environment and joins the group. On a machine
without a GPU it must be told so (`cpu=True`), or it treats a torchrun launch as one
process: then every process would do all the work and write the same files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState

from ddb.utils import atomic_path


def process_state() -> PartialState:
    """This process's place in the launch (process_index, num_processes, device): gloo
    between CPU processes, NCCL between GPUs; a plain run is process 0 of 1."""
    return PartialState(cpu=not torch.cuda.is_available())


def split_sizes(n: int, parts: int) -> list[int]:
    """n items over `parts` processes as evenly as possible, the larger shares first (the
    split of one global batch: process r takes the r-th contiguous slice)."""
    return [n // parts + (1 if r < n % parts else 0) for r in range(parts)]


@contextmanager
def main_process_output(target: str | Path) -> Iterator[Path]:
    """`atomic_path(target)` in the main process; in the others a scratch path that is
    deleted afterwards: every process runs the stage's code (the training steps need them
    all), one writes its outputs."""
    if process_state().is_main_process:
        with atomic_path(target) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / Path(target).name
