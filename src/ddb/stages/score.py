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

On a GPU the classifiers run there under autocast (`score.dtype`, auto: bfloat16); a
background thread reads and transforms the next batch meanwhile. The integrated-gradients
paths of a batch (`score.batch_size` x `score.ig_steps` images) go through the model in as
few forward and backward passes as `score.ig_memory_gb` allows: the activations of one image
are measured once (`activation_bytes`), and a pass holds as many images as fit the budget
(the waterbirds profile's 32 x 50 ResNet-50 images at 224 px, about 96 MiB each, would need
some 150 GiB in one pass). The passes split the steps, or, when not even one step of every
sample fits, the samples too; the sums over steps are the same up to float rounding. The
embedded default (ResNet-18, 64 px, 32 x 20) fits one pass, so on CPU (float32, no autocast)
its numbers are today's, bit for bit. Under `accelerate launch` or `torchrun` the batches
are spread over the processes by index, as generate's shards; each process writes its share to
models/score.parts/ and the main process merges them in manifest order, so the output
equals a one-process run's (on CPU, bit for bit).

An interrupted run restarts from scratch rather than resuming: the scores are a pure,
deterministic function of the generated samples and the two classifiers, so a restart ends
bit-identical to an uninterrupted run; it costs a few forward and backward passes per
sample, a small fraction of generate's diffusion steps; and without a resume there is no
partial state whose staleness (a changed model, manifest or param) would need guarding.
The output's temporary folder (models/.score.*) appears when the work starts and becomes
models/score only when every sample is scored; a run killed outright leaves it (and, with
several processes, models/score.parts) behind, and the next run removes it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
import torchvision.transforms as T
from captum.attr import IntegratedGradients
from PIL import Image
from tqdm import tqdm

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import load_image
from ddb.distributed import process_state
from ddb.models.classifier import eval_transform, load_classifier
from ddb.utils import atomic_path, remove_stale_temporaries

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    state = process_state()
    manifest = pd.read_csv(paths.GENERATE / "manifest.csv")
    parts = paths.SCORE.with_name(f"{paths.SCORE.name}.parts")
    if state.is_main_process:
        remove_stale_temporaries(paths.SCORE)
        shutil.rmtree(parts, ignore_errors=True)  # a killed multi-process run's shares
        if state.num_processes > 1:
            parts.mkdir(parents=True)
    state.wait_for_everyone()
    starts = list(range(0, len(manifest), config.score.batch_size))
    mine = starts[state.process_index :: state.num_processes]
    log.info("score: %d samples in %d batches, %d here", len(manifest), len(starts), len(mine))
    show = state.is_local_main_process
    if not state.is_main_process:  # score this process's share; the main process merges
        table, attributions = score_manifest(manifest, config, mine, state.device, show)
        with atomic_path(parts / f"part_{state.process_index:03d}") as tmp:
            tmp.mkdir()
            table.to_pickle(tmp / "scores.pkl")  # dtypes kept exactly, unlike a CSV
            np.save(tmp / "attributions.npy", attributions)
        state.wait_for_everyone()
        return
    with atomic_path(paths.SCORE) as out:  # its temporary folder: the work in progress
        out.mkdir()
        table, attributions = score_manifest(manifest, config, mine, state.device, show)
        state.wait_for_everyone()
        tables, maps = [table], [attributions]
        for rank in range(1, state.num_processes):
            tables.append(pd.read_pickle(parts / f"part_{rank:03d}" / "scores.pkl"))
            maps.append(np.load(parts / f"part_{rank:03d}" / "attributions.npy"))
        table = pd.concat(tables)
        order = np.argsort(table.index.to_numpy(), kind="stable")  # manifest order
        table, attributions = table.iloc[order], np.concatenate(maps)[order]
        table.to_csv(out / "scores.csv", index=False)
        np.save(out / "attributions.npy", attributions)
    shutil.rmtree(parts, ignore_errors=True)
    log.info("score: %d samples", len(table))


def score_manifest(
    manifest: pd.DataFrame,
    config: Config,
    starts: list[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest's rows with their scores, and their attribution maps (N×H×W float16):
    of every row, or of the batches that begin at `starts` (a process's share)."""
    size, batch_size = config.data.image_size, config.score.batch_size
    device = torch.device(device)
    dtype = autocast_dtype(config.score.dtype, device)
    erm = load_classifier(paths.ERM / "model.pt").to(device)
    independent_path = paths.BASELINES / "group_balanced" / "model.pt"
    independent = None
    if independent_path.is_file():
        independent = load_classifier(independent_path).to(device)
    per_pass = images_per_pass(erm, size, config.score.ig_memory_gb)
    log.info(
        "score: integrated gradients in passes of up to %d images (score.ig_memory_gb: %g)",
        per_pass,
        config.score.ig_memory_gb,
    )
    if starts is None:
        starts = list(range(0, len(manifest), batch_size))
    batches = [manifest.iloc[start : start + batch_size] for start in starts]
    scores, maps = [], []
    with ThreadPoolExecutor(1) as io:  # reads and transforms batch k + 1 during batch k
        upcoming = io.submit(read_batch, batches[0], config) if batches else None
        for k, batch in enumerate(tqdm(batches, desc="score", unit="batch", disable=not progress)):
            inputs = upcoming.result()
            if k + 1 < len(batches):
                upcoming = io.submit(read_batch, batches[k + 1], config)
            result = score_tensors(
                erm, *inputs, batch.source_y.to_numpy(), batch.y.to_numpy(),
                config.score.ig_steps, independent, dtype, per_pass,
            )  # fmt: skip
            maps.append(result.pop("attribution"))
            scores.append(pd.DataFrame(result, index=batch.index))
    if not scores:
        return manifest.iloc[:0], np.zeros((0, size, size), np.float16)
    rows = pd.concat(scores)
    return pd.concat([manifest.loc[rows.index], rows], axis=1), np.concatenate(maps)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """`score.dtype` as an autocast dtype: auto is bfloat16 on a GPU and None (float32, no
    autocast: today's numbers) on CPU; float32 is None everywhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if name == "float32" else getattr(torch, name)


def read_batch(batch: pd.DataFrame, config: Config) -> tuple[torch.Tensor, ...]:
    """A batch's generated samples, sources and masks from disk, through `prepare_batch`."""
    root = config.data.root
    generated = [load_image(paths.GENERATE / f) for f in batch.img_filename]
    sources = [load_image(f"{root}/{f}") for f in batch.source_filename]
    masks = [Image.open(paths.SEGMENT / f) for f in batch.mask_filename]
    return prepare_batch(generated, sources, masks, config.data.image_size)


def mask_transform(image_size: int):
    """The eval transform's resize and center crop, for a mask (nearest: it stays binary)."""
    return T.Compose(
        [
            T.Resize(int(round(image_size * 256 / 224)), interpolation=T.InterpolationMode.NEAREST),
            T.CenterCrop(image_size),
            T.PILToTensor(),
        ]
    )


def prepare_batch(generated, sources, masks, size: int) -> tuple[torch.Tensor, ...]:
    """(generated, source, mask) PIL images as the eval transform's tensors (CPU): the
    samples and sources B×3×S×S, the masks B×S×S (0/1 float)."""
    transform = eval_transform(size)
    x_new = torch.stack([transform(im) for im in generated])
    x_source = torch.stack([transform(im) for im in sources])
    to_mask = mask_transform(size)
    mask = torch.stack([to_mask(m.convert("L"))[0] > 127 for m in masks]).float()
    return x_new, x_source, mask


def score_batch(
    erm, generated, sources, masks, source_y, target_y, size, ig_steps, independent=None
) -> dict[str, np.ndarray]:
    """Scores of one batch of (generated, source, mask) PIL images; see the module doc."""
    inputs = prepare_batch(generated, sources, masks, size)
    return score_tensors(erm, *inputs, source_y, target_y, ig_steps, independent)


def score_tensors(
    erm,
    x_new,
    x_source,
    mask,
    source_y,
    target_y,
    ig_steps,
    independent=None,
    dtype=None,
    per_pass: int | None = None,
) -> dict[str, np.ndarray]:
    """Scores of one batch of `prepare_batch` tensors, on the classifier's device, under
    autocast to `dtype` if one is given (None: float32); integrated gradients in passes of
    at most `per_pass` images (None: one pass)."""
    device = next(erm.parameters()).device
    x_new, x_source, mask = (x.to(device, non_blocking=True) for x in (x_new, x_source, mask))
    old = torch.as_tensor(np.asarray(source_y), device=device)
    new = torch.as_tensor(np.asarray(target_y), device=device)
    rows = torch.arange(len(old), device=device)
    autocast = torch.autocast(device.type, dtype) if dtype is not None else contextlib.nullcontext()
    with autocast:
        with torch.no_grad():
            probs_new = torch.softmax(erm(x_new).float(), 1)
            probs_source = torch.softmax(erm(x_source).float(), 1)
        attribution = integrated_gradients(erm, x_new, x_source, new, ig_steps, per_pass)
        attribution = attribution.float()
        p_independent = None
        if independent is not None:
            with torch.no_grad():
                p_independent = torch.softmax(independent(x_new).float(), 1)[rows, new]
    result = {
        "p_old": probs_new[rows, old].cpu().numpy(),
        "p_new": probs_new[rows, new].cpu().numpy(),
        "p_old_source": probs_source[rows, old].cpu().numpy(),
        **attribution_scores(attribution, mask),
        "attribution": attribution.cpu().numpy().astype(np.float16),
    }
    if p_independent is not None:
        result["p_independent"] = p_independent.cpu().numpy()
    return result


def integrated_gradients(
    model, inputs, baselines, target, steps: int, per_pass: int | None = None
) -> torch.Tensor:
    """Captum's IG from each source to its generated sample, summed over channels: B×H×W.

    The B·steps path points go through the model in passes of at most `per_pass` images
    (None: all in one pass). Captum splits the steps into passes of whole steps of every
    sample (`internal_batch_size`, at least B images); when not even B fit, the samples are
    split too, into groups of `per_pass`, one step per pass."""
    ig = IntegratedGradients(model)
    per_pass = len(inputs) * steps if per_pass is None else max(1, per_pass)
    group = len(inputs) if per_pass >= len(inputs) else per_pass
    parts = []
    for start in range(0, len(inputs), group):
        part = slice(start, start + group)
        samples = len(inputs[part])
        attribution = ig.attribute(
            inputs[part],
            baselines=baselines[part],
            target=target[part],
            n_steps=steps,
            internal_batch_size=min(samples * steps, max(per_pass, samples)),
        )
        parts.append(attribution.sum(1).detach())
    return torch.cat(parts)


def images_per_pass(model, size: int, memory_gb: float) -> int:
    """How many images one integrated-gradients pass of `model` at `size` px may hold
    within `memory_gb` GiB of activations (at least 1)."""
    return max(1, int(memory_gb * 2**30 // activation_bytes(model, size)))


# measured peaks of a forward and backward pass per image, over the sum of the leaf modules'
# outputs: 0.8 for ResNet-50 at 224 px, 1.5 for ResNet-18 at 64 px (float32, CPU)
ACTIVATION_FACTOR = 1.5


def activation_bytes(model, size: int) -> int:
    """Bytes of activations one image at `size` px holds for a backward pass through
    `model`: the outputs of its leaf modules in one forward pass, times ACTIVATION_FACTOR."""
    total = 0

    def count(module, args, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return int(total * ACTIVATION_FACTOR)


def attribution_scores(attribution: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    """attr_score = sum(M * relu(A)) / sum(|A|) in [0, 1]; attr_sum = the paper's sum(M * A)."""
    total = attribution.abs().flatten(1).sum(1)
    inside = (attribution.clamp(min=0) * mask).flatten(1).sum(1)
    score = torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))
    return {
        "attr_score": score.cpu().numpy(),
        "attr_sum": (attribution * mask).flatten(1).sum(1).cpu().numpy(),
    }
