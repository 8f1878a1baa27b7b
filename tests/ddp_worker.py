"""Run by tests/test_distributed.py, as one process or under `torchrun --nproc_per_node 2`
(gloo): one epoch of `train_classifier` on fixed data, each loss kind, and a file written
through `main_process_output`. Process 0 saves what it trained to <out>/<kind>.pt."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddb.config import load_config
from ddb.distributed import main_process_output, process_state
from ddb.methods.group_dro import GroupDROLoss
from ddb.training import train_classifier

# 47 = 6 batches of 7 and one of 5: uneven shares (4 + 3, 3 + 2) over 2 processes, and a
# last batch of >= 2 per process, which neither drops (BatchNorm's rule in training.py)
N_TRAIN, N_VAL = 47, 12
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the other keys: conf/'s


class Fixed(torch.utils.data.Dataset):
    """Deterministic images (no augmentation: its random draws would differ by process)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.group = torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.group[i], i


def small_net() -> nn.Module:
    """No BatchNorm: on CPU each process normalises its own slice (no SyncBatchNorm there)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )


def main(out: Path) -> None:
    state = process_state()
    train, val = Fixed(N_TRAIN, 0), Fixed(N_VAL, 1)
    # SGD: Adam divides by the gradient's own scale, so it turns float32 rounding of gradients
    # near 0 into steps of size lr, and no tolerance could tell a bug from rounding
    cfg = dataclasses.replace(
        load_config(PARAMS).classifier,
        optimizer="sgd",
        lr=0.1,
        batch_size=7,
        epochs=1,
        weights="",
        schedule="constant",
    )
    groups = train.group.numpy()
    kinds = {
        "mean": {},
        "loss_weights": {"loss_weights": np.linspace(0.0, 2.0, N_TRAIN)},
        "sample_weights": {"sample_weights": np.linspace(1.0, 3.0, N_TRAIN)},
        "group_dro": {"group_loss": GroupDROLoss(np.bincount(groups, minlength=4), step_size=0.5)},
    }
    for kind, extra in kinds.items():
        result = train_classifier(small_net(), train, val, cfg, seed=3, **extra)
        with main_process_output(out / f"{kind}.pt") as path:
            torch.save({"state": result.model.state_dict(), "history": result.history}, path)
    with main_process_output(out / "written_by.txt") as path:
        path.write_text(f"process {state.process_index} of {state.num_processes}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
