"""Data-parallel classifier training on two CPU processes (torchrun, gloo) against one
process (issue 16): the same global batches, each process half of each, must take the
same steps. And only the main process writes a stage's outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddb.distributed import split_sizes

WORKER = Path(__file__).with_name("ddp_worker.py")
KINDS = ("mean", "loss_weights", "sample_weights", "group_dro")
# Two processes sum their gradients in another order than one process does, and the
# losses are reduced in halves: float32 rounding only, over 7 SGD steps at lr 0.1.
ATOL = 1e-5


def run_worker(out: Path, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(WORKER), str(out)]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", str(WORKER), str(out),
        ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    run_worker(one, 1)
    run_worker(two, 2)
    return one, two


def test_split_sizes_cover_the_batch_larger_shares_first():
    assert split_sizes(7, 2) == [4, 3]
    assert split_sizes(3, 4) == [1, 1, 1, 0]
    assert all(sum(split_sizes(n, w)) == n for n in range(20) for w in (1, 2, 3, 8))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_take_the_steps_of_one(runs, kind):
    one, two = (torch.load(folder / f"{kind}.pt", weights_only=True) for folder in runs)
    start = _initial_state()
    for name, weight in one["state"].items():
        moved = (weight - start[name]).abs().max()
        assert moved > 100 * ATOL, f"{name} barely trained: the comparison would be empty"
        torch.testing.assert_close(two["state"][name], weight, atol=ATOL, rtol=0)
    for a, b in zip(one["history"], two["history"]):  # whole-train-set loss and accuracy
        assert a["train_acc"] == b["train_acc"] and a["val_wga"] == b["val_wga"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5


@pytest.mark.slow
def test_only_the_main_process_writes(runs):
    folder = runs[1]
    assert (folder / "written_by.txt").read_text() == "process 0 of 2"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{k}.pt" for k in KINDS] + ["written_by.txt"]
    )  # no other process's file, no temporary left beside them


def _initial_state():
    sys.path.insert(0, str(WORKER.parent))
    from ddp_worker import small_net  # noqa: PLC0415

    return small_net().state_dict()
