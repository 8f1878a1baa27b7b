"""score: everything expensive about each generated sample, computed once (DDB step 6).

For a sample x' generated from source x (class i) as target i', with the ERM model f
(val-selected checkpoint, models/erm/model.pt):
- `p_old` = softmax_i f(x') and `p_new` = softmax_i' f(x'): does ERM still see the old class?
- `p_old_source` = softmax_i f(x): the same on the source, for prune's paired condition;
- integrated gradients (captum) from baseline x to input x' for target i', both through the
  *same* deterministic eval transform (the public code crops them independently, a bug), and
  the mask through the same resize and crop. Summed over colour channels, the map A gives
  - `attr_score` = sum(M * relu(A)) / sum(|A|), in [0, 1]: the share of all attribution
    that is evidence *for* i' *inside* the repainted region (0 when there is none). It is
    low when the change that matters lies outside the mask (VAE drift, where there is no
    paste-back) or when what was painted argues against i'. `prune.threshold` applies to it.
    With paste-back, pixels outside the mask equal the source's, so IG there is 0 (up to
    the resize of the transform) and the score is the positive share within the mask.
  - `attr_sum` = sum(M * A), the paper's rho (unbounded; by IG's completeness about
    f_i'(x') - f_i'(x) when nothing outside the mask changed). Kept for comparison.
- `p_independent` = softmax_i' of the group-balanced baseline (trained on group-balanced real
  data, not the ERM model) when it was trained: a diagnostic of whether the sample looks like
  its new class; it is never used for pruning.
Writes models/score/scores.csv (the manifest's columns plus the scores) and
attributions.npy (float16 N×H×W, the maps, for the gallery), all at once at the end.

An interrupted run restarts from scratch rather than resuming: the scores are a pure,
deterministic function of the generated samples and the two classifiers, so a restart ends
bit-identical to an uninterrupted run; it costs a few forward and backward passes per
sample, a small fraction of generate's diffusion steps; and without a resume there is no
partial state whose staleness (a changed model, manifest or param) would need guarding.
The output's temporary folder (models/.score.*) appears when the work starts and becomes
models/score only when every sample is scored; a run killed outright leaves it behind,
and the next run removes it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
import torchvision.transforms as T
from captum.attr import IntegratedGradients
from PIL import Image
from tqdm import tqdm

from ddb import paths
from ddb.config import Config
from ddb.data.waterbirds import load_image
from ddb.models.classifier import eval_transform, load_classifier
from ddb.utils import atomic_path, remove_stale_temporaries

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    manifest = pd.read_csv(paths.GENERATE / "manifest.csv")
    remove_stale_temporaries(paths.SCORE)
    with atomic_path(paths.SCORE) as out:  # its temporary folder: the work in progress
        out.mkdir()
        table, attributions = score_manifest(manifest, config)
        table.to_csv(out / "scores.csv", index=False)
        np.save(out / "attributions.npy", attributions)
    log.info("score: %d samples", len(table))


def score_manifest(manifest: pd.DataFrame, config: Config) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest with every sample's scores, and the attribution maps (N×H×W float16)."""
    size = config.data.image_size
    erm = load_classifier(paths.ERM / "model.pt")
    independent_path = paths.BASELINES / "group_balanced" / "model.pt"
    independent = load_classifier(independent_path) if independent_path.is_file() else None
    root = config.data.root
    scores, maps = [], []
    batches = range(0, len(manifest), config.score.batch_size)
    for start in tqdm(batches, desc="score", unit="batch"):
        batch = manifest.iloc[start : start + config.score.batch_size]
        generated = [load_image(paths.GENERATE / f) for f in batch.img_filename]
        sources = [load_image(f"{root}/{f}") for f in batch.source_filename]
        masks = [Image.open(paths.SEGMENT / f) for f in batch.mask_filename]
        result = score_batch(
            erm,
            generated,
            sources,
            masks,
            batch.source_y.to_numpy(),
            batch.y.to_numpy(),
            size,
            config.score.ig_steps,
            independent,
        )
        maps.append(result.pop("attribution"))
        scores.append(pd.DataFrame(result, index=batch.index))
    if not scores:
        return manifest, np.zeros((0, size, size), np.float16)
    return pd.concat([manifest, pd.concat(scores)], axis=1), np.concatenate(maps)


def mask_transform(image_size: int):
    """The eval transform's resize and center crop, for a mask (nearest: it stays binary)."""
    return T.Compose(
        [
            T.Resize(int(round(image_size * 256 / 224)), interpolation=T.InterpolationMode.NEAREST),
            T.CenterCrop(image_size),
            T.PILToTensor(),
        ]
    )


def score_batch(
    erm, generated, sources, masks, source_y, target_y, size, ig_steps, independent=None
) -> dict[str, np.ndarray]:
    """Scores of one batch of (generated, source, mask) PIL images; see the module doc."""
    transform = eval_transform(size)
    x_new = torch.stack([transform(im) for im in generated])
    x_source = torch.stack([transform(im) for im in sources])
    to_mask = mask_transform(size)
    mask = torch.stack([to_mask(m.convert("L"))[0] > 127 for m in masks]).float()
    old, new = torch.as_tensor(source_y), torch.as_tensor(target_y)
    rows = torch.arange(len(old))
    with torch.no_grad():
        probs_new = torch.softmax(erm(x_new), 1)
        probs_source = torch.softmax(erm(x_source), 1)
    attribution = integrated_gradients(erm, x_new, x_source, new, ig_steps)
    result = {
        "p_old": probs_new[rows, old].numpy(),
        "p_new": probs_new[rows, new].numpy(),
        "p_old_source": probs_source[rows, old].numpy(),
        **attribution_scores(attribution, mask),
        "attribution": attribution.numpy().astype(np.float16),
    }
    if independent is not None:
        with torch.no_grad():
            result["p_independent"] = torch.softmax(independent(x_new), 1)[rows, new].numpy()
    return result


def integrated_gradients(model, inputs, baselines, target, steps: int) -> torch.Tensor:
    """Captum's IG from each source to its generated sample, summed over channels: B×H×W."""
    ig = IntegratedGradients(model)
    attribution = ig.attribute(
        inputs,
        baselines=baselines,
        target=target,
        n_steps=steps,
        internal_batch_size=len(inputs) * steps,
    )
    return attribution.sum(1).detach()


def attribution_scores(attribution: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    """attr_score = sum(M * relu(A)) / sum(|A|) in [0, 1]; attr_sum = the paper's sum(M * A)."""
    total = attribution.abs().flatten(1).sum(1)
    inside = (attribution.clamp(min=0) * mask).flatten(1).sum(1)
    score = torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))
    return {
        "attr_score": score.numpy(),
        "attr_sum": (attribution * mask).flatten(1).sum(1).numpy(),
    }
