"""GroupDRO (Sagawa et al. 2020) as its code runs it (kohpangwei/group_DRO, `loss.py`
`LossComputer.compute_robust_loss` with `--robust`, and `--reweight_groups`, which every
published command sets): group-balanced batches, and online group weights
q_g <- q_g exp(step_size * (loss_g + adjustment / sqrt(n_g))), normalised, with the loss
sum_g q_g (loss_g + adjustment / sqrt(n_g)). Reads the train group labels."""

from __future__ import annotations

import numpy as np
import torch

from ddb.data.dataset import split_table
from ddb.methods.group_balanced import group_balanced_weights
from ddb.training import fit_classifier


class GroupDROLoss:
    """Callable `(per-sample losses, group ids) -> loss` that updates its group weights.
    Not carried over from the reference: `--use_normalized_loss` and `--btl` (off in every
    published command)."""

    def __init__(self, group_sizes: np.ndarray, step_size: float, adjustment: float = 0.0):
        sizes = torch.as_tensor(group_sizes, dtype=torch.float32).clamp(min=1)
        self.n_groups = len(group_sizes)
        self.step_size = step_size
        self.adjust = adjustment / sizes.sqrt()  # 0 when adjustment is 0, as theirs skips it
        self.q = torch.full((self.n_groups,), 1.0 / self.n_groups)

    def __call__(self, losses: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        device = losses.device
        if self.q.device != device:  # kept where the losses are: no copy back per step
            self.q, self.adjust = self.q.to(device), self.adjust.to(device)
        counts = torch.bincount(group, minlength=self.n_groups).float()
        sums = torch.zeros(self.n_groups, device=device).index_add(0, group, losses)
        group_loss = sums / counts.clamp(min=1)  # an absent group's loss is 0
        # As theirs: every group steps, an absent one by its adjustment alone; q weights
        # the adjusted losses (a constant shift: the gradient is that of q . loss_g).
        adjusted = group_loss + self.adjust
        self.q = self.q * torch.exp(self.step_size * adjusted.detach())
        self.q = self.q / self.q.sum()
        return (self.q * adjusted).sum()


def train(config, root, table, groups):
    cfg = config.baselines.group_dro
    train_groups = split_table(table, "train")["group"].to_numpy()
    sizes = np.bincount(train_groups, minlength=groups.n_groups)
    loss = GroupDROLoss(sizes, cfg.step_size, cfg.adjustment)
    # their sampler: weights n / n_g, with replacement, n draws an epoch (the same
    # distribution as 1 / n_g)
    weights = group_balanced_weights(train_groups) if cfg.reweight_groups else None
    return fit_classifier(
        config,
        root,
        table,
        groups.n_classes,
        config.baselines.seed,
        group_loss=loss,
        sample_weights=weights,
    )
