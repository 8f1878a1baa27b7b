"""DaC, Decompose-and-Compose (Noohdani et al., CVPR 2024), as its code runs it
(fhn98/DaC @854537d, branch `release`):

1. Adaptive masks (`adaptive_mask.py`, main, get_quantile_masks, save_masks): the XGrad-CAM
   of the ERM model's last block (`layer4[-1]`, pytorch-grad-cam 1.5.2's XGradCAM) for the
   class it predicts, upsampled to the input size and scaled to [0, 1]. For each quantile q
   of QUANTILES an image keeps its pixels at or above its own CAM's q-quantile (the rest set
   to 0) and ERM's loss on it is measured; the q at the knee of that loss curve (kneed 0.8.5,
   convex, increasing, S=1, online) gives the image's mask, 0.8 where there is no knee.
2. t = the `dac.quantile` quantile of ERM's per-sample train losses
   (`utils.py` compute_loss_quantiles).
3. Retraining (`main.py` main, `train.py` train_masked_low_loss): every layer frozen but
   the last, which is re-initialised (Xavier uniform, bias 0, `utils.py` weight_init). In
   each batch the images whose ERM loss is at most t are decomposed: masked (the causal part
   kept, the rest the batch's channel mean) and composed with a random selected partner of
   another class (x_i m_i + (1 - m_i)(1 - m_j) x_j + (1 - m_i) m_j mean, label y_i). Loss =
   CE(batch) + alpha CE(masked) + alpha CE(composed). The model stays in train() mode, so
   BatchNorm normalises with each batch's statistics and its running statistics move,
   although no BatchNorm parameter trains: theirs does the same.
4. The checkpoint: the epoch of best val WGA, ties broken by val mean accuracy.

Group labels: none in train (only class labels and ERM's losses); val groups select the
epoch. Train images are read with the eval transform (no augmentation), as their Waterbirds
and MetaShift loaders do, so that each mask stays on its image's pixels.

Departures, and why:
- Their CelebA loader crops and flips train images at random against masks computed once
  (and squeezes a mask axis that train.py then permutes as 4-D, which fails as published);
  we read every dataset as their Waterbirds, the pixel-aligned way the paper describes.
- ERM's per-sample loss, which selects the batch's low-loss images, is computed once (in the
  masking pass) rather than again in every batch: the frozen ERM model in eval mode on the
  same untransformed image gives the same loss.
- XGrad-CAM is computed here with a forward hook (pytorch-grad-cam is not a dependency);
  cv2.resize's bilinear upsampling is torch's (align_corners=False: the same half-pixel
  rule). The knee is kneed 0.8.5's computation on six points, transcribed (knee_quantile).
- Draws (shuffling, partners) come from `dac.seed`; theirs from the global NumPy state.
- With more than two classes a partner comes from any other class (theirs has two).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ddb.data.dataset import ImageTable, split_table
from ddb.models.classifier import eval_transform
from ddb.training import TrainResult, evaluate_split, resolve_device
from ddb.utils import seed_everything

log = logging.getLogger(__name__)

QUANTILES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # adaptive_mask.py's mask quantiles
NO_KNEE = 0.8  # save_masks: `if t == None: t = 0.8`


# ---- 1. adaptive masks ---------------------------------------------------------------------


def scale_to_unit(cams: torch.Tensor) -> torch.Tensor:
    """Each map of (B, H, W) shifted and scaled to [0, 1] (pytorch-grad-cam's
    scale_cam_image, with its 1e-7 guard against a constant map)."""
    cams = cams - cams.amin((1, 2), keepdim=True)
    return cams / (cams.amax((1, 2), keepdim=True) + 1e-7)


def xgrad_cam(activations: torch.Tensor, grads: torch.Tensor, size) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020) of (B, K, h, w) activations and their gradients: channel
    weights sum(A * dA) / sum(A), the ReLU of the weighted sum, scaled to [0, 1], upsampled
    bilinearly to `size` and scaled again (BaseCAM's per-layer and aggregate scaling)."""
    weights = (grads * activations).sum((2, 3)) / (activations.sum((2, 3)) + 1e-7)
    cams = torch.relu((weights[:, :, None, None] * activations).sum(1))
    cams = F.interpolate(scale_to_unit(cams)[:, None], size=tuple(size), mode="bilinear")
    return scale_to_unit(cams[:, 0])


def predicted_class_cam(model: nn.Module, images: torch.Tensor):
    """(XGrad-CAM of `model.layer4[-1]` for each image's predicted class, logits)."""
    captured = []
    handle = model.layer4[-1].register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        with torch.enable_grad():
            # a graph even where the model's parameters are frozen
            logits = model(images.detach().requires_grad_())
            target = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            (grads,) = torch.autograd.grad(target, captured[0])
    finally:
        handle.remove()
    return xgrad_cam(captured[0].detach(), grads, images.shape[-2:]), logits.detach()


def quantile_masks(cams: torch.Tensor, quantiles=QUANTILES) -> torch.Tensor:
    """(Q, B, H, W): each image's pixels at or above its CAM's q-quantile (linear
    interpolation, np.quantile's default), for each q. In float64, as NumPy computes theirs:
    a float32 quantile can round onto a neighbouring pixel's value and keep that pixel."""
    cams = cams.double()
    levels = torch.quantile(cams.flatten(1), cams.new_tensor(quantiles), dim=1)
    return cams[None] >= levels[:, :, None, None]


def knee_quantile(losses, quantiles=QUANTILES, sensitivity: float = 1.0) -> float:
    """The q at the knee of ERM's masked loss against q, as adaptive_mask.py's save_masks
    finds it: kneed 0.8.5's KneeLocator(curve="convex", direction="increasing",
    online=True, S=1).elbow, NO_KNEE where it finds none. Kneedle (Satopää et al. 2011):
    both axes normalised to [0, 1], the curve mirrored into a concave increasing one, the
    knee a local maximum of (y - x) after which the difference drops below that maximum
    minus S times the mean x step; online: a later knee replaces an earlier one."""
    x, y = np.asarray(quantiles, float), np.asarray(losses, float)
    if np.ptp(y) == 0:  # kneed divides by zero here and finds nothing
        return NO_KNEE
    x_norm = (x - x.min()) / np.ptp(x)
    y_norm = np.flip(1 - (y - y.min()) / np.ptp(y))
    diff = y_norm - x_norm
    before, after = np.r_[diff[0], diff[:-1]], np.r_[diff[1:], diff[-1]]  # edges: themselves
    maxima = (diff >= before) & (diff >= after)
    minima = (diff <= before) & (diff <= after)
    if not maxima.any():
        return NO_KNEE
    drop = sensitivity * np.abs(np.diff(x_norm).mean())
    knee = None
    for i in range(int(np.argmax(maxima)), len(diff) - 1):
        if maxima[i]:
            threshold, at = diff[i] - drop, i
        if minima[i]:
            threshold = 0.0
        if diff[i + 1] < threshold:
            knee = x[len(x) - 1 - at]  # index into the unmirrored curve
    return NO_KNEE if knee is None else float(knee)


@dataclass
class Masks:
    """One adaptive mask per train image (rows in train-split order)."""

    packed: np.ndarray  # (N, ceil(H * W / 8)) uint8: np.packbits of each flattened mask
    size: tuple[int, int]  # (H, W)
    quantile: np.ndarray  # (N,) the q each mask keeps pixels above
    erm_loss: np.ndarray  # (N,) ERM's cross-entropy on the unmasked image
    masked_loss: np.ndarray  # (N, Q) ERM's loss on the image masked at each q of QUANTILES

    def unpack(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 1, H, W) float32 masks of these rows."""
        h, w = self.size
        bits = np.unpackbits(self.packed[rows], axis=1, count=h * w)
        return bits.reshape(len(rows), 1, h, w).astype(np.float32)


@torch.no_grad()
def adaptive_masks(erm_model: nn.Module, dataset, batch_size: int, num_workers: int = 0) -> Masks:
    """The adaptive mask of every image of `dataset` (ImageTable rows: image, y, ...)."""
    model = copy.deepcopy(erm_model).eval()  # pytorch-grad-cam puts the model in eval mode
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    packed, chosen, erm_losses, masked_losses, size = [], [], [], [], None
    for images, y, *_ in tqdm(loader, desc="dac masks", unit="batch"):
        images, y = images.to(device), y.to(device)
        cams, logits = predicted_class_cam(model, images)
        candidates = quantile_masks(cams)
        losses = torch.stack(
            [F.cross_entropy(model(images * m[:, None]), y, reduction="none") for m in candidates],
            1,
        ).cpu()
        q = np.array([knee_quantile(curve) for curve in losses.numpy()])
        pick = torch.as_tensor([QUANTILES.index(v) for v in q])
        masks = candidates[pick.to(device), torch.arange(len(images), device=device)]
        packed.append(np.packbits(masks.flatten(1).cpu().numpy(), axis=1))
        chosen.append(q)
        erm_losses.append(F.cross_entropy(logits, y, reduction="none").cpu().numpy())
        masked_losses.append(losses.numpy())
        size = tuple(images.shape[-2:])
    return Masks(
        np.concatenate(packed),
        size,
        np.concatenate(chosen),
        np.concatenate(erm_losses),
        np.concatenate(masked_losses),
    )


# ---- 3. decompose and compose --------------------------------------------------------------


def low_loss_rows(erm_loss: np.ndarray, quantile: float) -> np.ndarray:
    """Which images are decomposed: ERM loss at most t, t its `quantile` quantile over the
    train split (their compute_loss_quantiles and `tmp_loss <= t`)."""
    return erm_loss <= np.quantile(erm_loss, quantile)


def draw_partners(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each image, the index of a random image of another class (uniform, with
    replacement: their np.random.choice); a permutation where all share one class (theirs)."""
    if bool((y == y[0]).all()):
        return torch.randperm(len(y), generator=generator).to(y.device)
    partners = torch.empty_like(y)
    for c in y.unique():
        own, others = (y == c).nonzero()[:, 0], (y != c).nonzero()[:, 0]
        draws = torch.randint(len(others), (len(own),), generator=generator).to(y.device)
        partners[own] = others[draws]
    return partners


def compose(
    images: torch.Tensor, masks: torch.Tensor, partners: torch.Tensor, mean: torch.Tensor
) -> torch.Tensor:
    """x_i m_i + (1 - m_i)(1 - m_j) x_j + (1 - m_i) m_j mean, j = partners[i]: image i's
    causal part on its partner's background, the partner's own causal part blanked."""
    x_j, m_j = images[partners], masks[partners]
    return images * masks + (1 - masks) * (1 - m_j) * x_j + (1 - masks) * m_j * mean


def dac_loss(
    model: nn.Module,
    images: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    selected: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of `images`) of one batch: CE(batch) + alpha CE(masked) + alpha
    CE(composed), the last two over the `selected` (low ERM loss) images; the batch alone
    when none is selected. One forward pass over all three, as theirs (BatchNorm sees them
    together)."""
    if not bool(selected.any()):
        logits = model(images)
        return F.cross_entropy(logits, y), logits
    mean = images.mean((0, 2, 3), keepdim=True)  # of the whole batch, per channel
    x, m, y_sel = images[selected], masks[selected], y[selected]
    masked = x * m + (1 - m) * mean
    composed = compose(x, m, draw_partners(y_sel, generator), mean)
    logits = model(torch.cat([images, masked, composed]))
    n, k = len(images), len(x)
    loss = (
        F.cross_entropy(logits[:n], y)
        + alpha * F.cross_entropy(logits[n : n + k], y_sel)
        + alpha * F.cross_entropy(logits[n + k :], y_sel)
    )
    return loss, logits[:n]


def head_only(erm_model: nn.Module) -> nn.Module:
    """A copy of the ERM model with every layer frozen but a fresh last layer (Xavier
    uniform weights, zero bias: their weight_init)."""
    model = copy.deepcopy(erm_model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc = nn.Linear(model.fc.in_features, model.fc.out_features)
    nn.init.xavier_uniform_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    return model


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """Their get_optimizer: Adam, or SGD with momentum 0.9."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(config, root, table, groups, erm_model, masks: Masks) -> TrainResult:
    """DaC's retrained head on the ERM model; `masks`: adaptive_masks of the train split
    (eval transform, same row order)."""
    cfg = config.dac
    seed_everything(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = resolve_device(config.classifier.device)
    transform = eval_transform(config.data.image_size)
    train_set = ImageTable(root, split_table(table, "train"), transform)
    val_set = ImageTable(root, split_table(table, "val"), transform)
    low_loss = low_loss_rows(masks.erm_loss, cfg.quantile)
    log.info("dac: %d of %d train images have a low ERM loss", low_loss.sum(), len(low_loss))
    model = head_only(erm_model).to(device)
    optimizer = make_optimizer(model.fc.parameters(), cfg)
    scheduler = None
    if cfg.step_size > 0:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
    loader = DataLoader(
        train_set,
        cfg.batch_size,
        shuffle=True,
        generator=generator,
        # a last batch of one image would stop BatchNorm in training mode
        drop_last=len(train_set) % cfg.batch_size == 1,
        num_workers=config.classifier.num_workers,
    )
    best, best_state, best_epoch, history = (-1.0, -1.0), None, 0, []
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="dac", unit="epoch"):
        model.train()  # theirs: BatchNorm's running statistics move, no layer but fc trains
        total_loss, correct, seen = 0.0, 0, 0
        for images, y, _, rows in loader:  # `_`: the train group, never read
            rows = rows.numpy()
            images, y = images.to(device), y.to(device)
            batch_masks = torch.from_numpy(masks.unpack(rows)).to(device)
            selected = torch.from_numpy(low_loss[rows]).to(device)
            loss, logits = dac_loss(model, images, y, batch_masks, selected, cfg.alpha, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if scheduler is not None:
            scheduler.step()
        val = evaluate_split(model, val_set)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total_loss / seen,
                "train_acc": correct / seen,
                "val_wga": val["wga"],
                "val_mean_acc": val["mean_acc"],
            }
        )
        if (val["wga"], val["mean_acc"]) > best:  # ties on WGA: the better val mean
            best = (val["wga"], val["mean_acc"])
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    log.info("dac: selected epoch %d (val WGA %.3f)", best_epoch, best[0])
    return TrainResult(model.eval(), best_epoch, history)
