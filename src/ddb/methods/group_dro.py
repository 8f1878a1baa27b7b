"""GroupDRO (Sagawa et al. 2020): minimise the worst group's loss through online group
weights q, q_g <- q_g exp(step_size * (loss_g + adjustment / sqrt(n_g))), normalised; the
training loss is sum_g q_g loss_g. Reads the train group labels."""

from __future__ import annotations

import numpy as np
import torch

from ddb.data.waterbirds import split_table
from ddb.training import fit_classifier


class GroupDROLoss:
    """Callable `(per-sample losses, group ids) -> loss` that updates its group weights."""

    def __init__(self, group_sizes: np.ndarray, step_size: float, adjustment: float = 0.0):
        sizes = torch.as_tensor(group_sizes, dtype=torch.float32).clamp(min=1)
        self.n_groups = len(group_sizes)
        self.step_size = step_size
        self.adjust = adjustment / sizes.sqrt()
        self.q = torch.full((self.n_groups,), 1.0 / self.n_groups)

    def __call__(self, losses: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        device = losses.device
        if self.q.device != device:  # kept where the losses are: no copy back per step
            self.q, self.adjust = self.q.to(device), self.adjust.to(device)
        counts = torch.bincount(group, minlength=self.n_groups).float()
        sums = torch.zeros(self.n_groups, device=device).index_add(0, group, losses)
        group_loss = sums / counts.clamp(min=1)
        present = (counts > 0).float()  # absent groups keep their weight
        step = self.step_size * (group_loss.detach() + self.adjust) * present
        self.q = self.q * torch.exp(step)
        self.q = self.q / self.q.sum()
        return (self.q * group_loss).sum()


def train(config, root, table, groups):
    cfg = config.baselines.group_dro
    train_groups = split_table(table, "train")["group"].to_numpy()
    sizes = np.bincount(train_groups, minlength=groups.n_groups)
    loss = GroupDROLoss(sizes, cfg.step_size, cfg.adjustment)
    return fit_classifier(
        config, root, table, groups.n_classes, config.baselines.seed, group_loss=loss
    )
