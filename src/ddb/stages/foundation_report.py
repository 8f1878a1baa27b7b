"""foundation_report: how good are the foundation models, on the benchmark's val split?

Always on the embedded benchmark (data/prepared), whose bird masks are ground truth, and
with the models that `models.*` and `segment.source` name, loaded as segment and generate
load them: the committed small models by default, a paper profile's checkpoints otherwise.
- Segmentation: mean IoU of the segmenter's `foundation_eval.seg_prompt` mask against the
  ground-truth bird masks. The segmenter is the profile's own: LangSAM (`models.detector` +
  `models.sam`, segment's thresholds) with `segment.source: langsam`, else CLIPSeg
  (`models.segmenter`; also for `truth`, a control that uses no segmenter).
- Inpainting: the bird of each val image is masked (its ground-truth outline, dilated) and
  repainted with a caption naming a species of class c, for every class c, at the
  pipeline's own side (512 px for SD2: the val images and masks resized to it, the repaint
  resized back and pasted inside the mask, as generate does); pixels outside the mask must
  stay the source's. The judge, models/judge (the frozen `judge` stage: group-balanced ERM
  trained on data/prepared's train split, never on data.root or a baseline), must recognise c.
Writes reports/foundation.json (DVC metrics), reports/foundation.md (which models it measured,
and the judge's val WGA) and a PNG grid.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ddb import paths  # noqa: E402
from ddb.config import Config  # noqa: E402
from ddb.data import embedded  # noqa: E402
from ddb.data.corpus import dilate, object_name  # noqa: E402
from ddb.data.dataset import WATERBIRDS_GROUPS, read_metadata, split_table  # noqa: E402
from ddb.models.classifier import eval_transform, load_classifier  # noqa: E402
from ddb.models.diffusion import inpaint, use_scheduler  # noqa: E402
from ddb.models.langsam import load_langsam  # noqa: E402
from ddb.models.loaders import load_inpaint_pipeline, load_segmenter  # noqa: E402
from ddb.models.segmenter import mask_iou, segment  # noqa: E402
from ddb.stages.generate import pipeline_size, resize_inputs, resolve_dtype  # noqa: E402
from ddb.training import resolve_device  # noqa: E402
from ddb.utils import StageError, atomic_path, sha256_file, write_json, write_text  # noqa: E402

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.foundation_eval
    # Always the embedded benchmark: it has ground-truth masks (data.root may not).
    root, groups = paths.PREPARED, WATERBIRDS_GROUPS
    judge, judge_info = load_judge()
    table = read_metadata(root, groups)
    val = balanced_sample(split_table(table, "val"), cfg.images, cfg.seed)
    images = np.stack([np.asarray(Image.open(root / f).convert("RGB")) for f in val.img_filename])
    truth = np.stack([np.asarray(Image.open(root / f)) > 0 for f in val.mask_filename])
    device = resolve_device("auto")

    predicted = segment_val(config, images, device)
    seg_iou = mask_iou(predicted, truth)

    # generate's dtype rule (float16 on a GPU, float32 on CPU) and its sampler
    pipe = load_inpaint_pipeline(config.models.diffusion, device, resolve_dtype("auto", device))
    use_scheduler(pipe, config.generate.scheduler)
    pipe.set_progress_bar_config(disable=True)
    masks = np.stack([dilate(m, cfg.dilate) for m in truth])
    rng = np.random.default_rng(cfg.seed)
    repaints, intended = {}, []
    start = time.perf_counter()
    for target in range(groups.n_classes):
        species = [object_name_of(s) for s, y in embedded.BIRDS.items() if y == target]
        prompts = [
            cfg.prompt.format(species=species[rng.integers(len(species))]) for _ in val.index
        ]
        repaints[target] = np.concatenate(
            [
                repaint(pipe, images[i : i + 32], masks[i : i + 32], prompts[i : i + 32], cfg, i)
                for i in range(0, len(images), 32)
            ]
        )
        intended.append(np.full(len(images), target))
    seconds_per_image = (time.perf_counter() - start) / (len(images) * groups.n_classes)
    outside_changed = max(
        int(np.abs(repaints[c].astype(int) - images).max(axis=-1)[~masks].max()) for c in repaints
    )
    size = judge_info["image_size"]  # the judge's own input side, whatever data.image_size
    predicted_class = np.concatenate([classify(judge, repaints[c], size) for c in repaints])
    intended = np.concatenate(intended)
    source_acc = float((classify(judge, images, size) == val.y.to_numpy()).mean())
    confusion = np.zeros((groups.n_classes, groups.n_classes), int)
    np.add.at(confusion, (intended, predicted_class), 1)
    measured = measured_models(config, pipeline_size(pipe))
    metrics = {
        "seg_iou": seg_iou,
        "repaint_recognised": float((predicted_class == intended).mean()),
        "classifier_acc_on_sources": source_acc,
        "outside_mask_max_change": outside_changed,
        "judge_val_wga": judge_info["val_wga"],
        "diffusion_model": config.models.diffusion,
        "segmenter_model": measured["segmenter_names"],
        "repaint_side": pipeline_size(pipe),
        **training_metrics(measured),
    }
    write_json(paths.REPORTS / "foundation.json", metrics)
    # a timing varies run to run, so it stays out of every DVC out (foundation.json and .md
    # must be bit-identical between two runs of the same params): the log has it
    log.info(
        "foundation_report: inpainting took %.3f s per %d px image on this machine (goal 0.5 s)",
        seconds_per_image,
        pipeline_size(pipe),
    )
    save_grid(
        images,
        masks,
        predicted,
        repaints,
        groups.class_names,
        paths.FIGURES / "foundation_repaint.png",
    )
    write_text(
        paths.REPORTS / "foundation.md",
        markdown(metrics, confusion, groups.class_names, cfg, measured, judge_info),
    )
    log.info(
        "foundation: seg IoU %.3f, repaint recognised %.3f", seg_iou, metrics["repaint_recognised"]
    )


def load_judge() -> tuple[torch.nn.Module, dict]:
    """The committed judge and its report.json; warns when data/prepared has been rebuilt
    since it was trained (its val WGA then describes another build of the benchmark)."""
    model_path, info_path = paths.JUDGE / "model.pt", paths.JUDGE / "report.json"
    if not model_path.is_file() or not info_path.is_file():
        raise StageError(
            f"{model_path} or {info_path} is missing: the judge is committed with the "
            "repository (git checkout models/judge), or rebuild it: `dvc unfreeze judge && "
            "dvc repro -f judge && dvc freeze judge`"
        )
    info = json.loads(info_path.read_text())
    info["stale"] = info["data_sha256"] != sha256_file(paths.PREPARED_MD5)
    if info["stale"]:
        log.warning(
            "%s was trained on another build of %s (prepare's params or sources changed since): "
            "rebuild it with `dvc unfreeze judge && dvc repro -f judge && dvc freeze judge`",
            paths.JUDGE,
            paths.PREPARED,
        )
    return load_classifier(model_path), info


def segment_val(config: Config, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Bool masks of `foundation_eval.seg_prompt` by the profile's segmenter, as the segment
    stage calls it: LangSAM with segment.source langsam, else CLIPSeg (models.segmenter)."""
    cfg, seg = config.foundation_eval, config.segment
    if seg.source == "langsam":
        langsam = load_langsam(config.models.detector, config.models.sam, device)
        pictures = [Image.fromarray(image) for image in images]
        return np.stack(
            langsam.masks(
                pictures,
                cfg.seg_prompt,
                seg.box_threshold,
                seg.text_threshold,
                seg.batch_size,
                seg.max_boxes,
            )
        )
    processor, segmenter = load_segmenter(config.models.segmenter, device)
    return segment(processor, segmenter, images, cfg.seg_prompt, cfg.seg_threshold)


def repaint(pipe, images, masks, prompts, cfg, offset: int) -> np.ndarray:
    """Inpaint at the pipeline's own side (generate's resize_inputs), then back at the
    images' side, pasted inside the mask as generate does. One seed per batch (its offset in
    the val sample plus foundation_eval.seed), as the report always had: the default's
    repaints stay the committed ones."""
    side = pipeline_size(pipe)
    resized, resized_masks = resize_inputs(images, masks, side)
    out = inpaint(
        pipe, resized, resized_masks, prompts, cfg.steps, cfg.guidance, seed=cfg.seed + offset
    )
    if side == images.shape[1]:
        return out
    height, width = images.shape[1:3]
    back = np.stack(
        [np.asarray(Image.fromarray(o).resize((width, height), Image.BILINEAR)) for o in out]
    )
    return np.where(masks[..., None], back, images)


def measured_models(config: Config, side: int) -> dict:
    """Which checkpoints were measured, and how each came to be: a folder with the train.json
    of a foundation stage was trained here; anything else is a checkpoint as downloaded."""
    models, seg = config.models, config.segment
    if seg.source == "langsam":
        segmenter = [("models.detector", models.detector), ("models.sam", models.sam)]
        kind = (
            f"LangSAM (GroundingDINO + SAM 2; segment.source: langsam, box threshold "
            f"{seg.box_threshold}, text threshold {seg.text_threshold}, at most "
            f"{seg.max_boxes or 'all'} boxes)"
        )
    else:
        segmenter = [("models.segmenter", models.segmenter)]
        threshold = config.foundation_eval.seg_threshold
        kind = f"CLIPSeg (segment.source: {seg.source}, threshold {threshold})"
    return {
        "diffusion": ("models.diffusion", models.diffusion, trained_here(models.diffusion)),
        "segmenter": [(key, name, trained_here(name)) for key, name in segmenter],
        "segmenter_kind": kind,
        "segmenter_names": " + ".join(name for _, name in segmenter),
        "side": side,
    }


def trained_here(name: str) -> dict | None:
    info = Path(name) / "train.json"
    return json.loads(info.read_text()) if info.is_file() else None


def training_metrics(measured: dict) -> dict:
    """The foundation stages' training time and device, for the models trained here."""
    metrics = {}
    inpaint_info = measured["diffusion"][2]
    if inpaint_info is not None:
        metrics["train_seconds"] = inpaint_info["train_seconds"]
        metrics["train_device"] = inpaint_info["train_device"]
    seg_info = measured["segmenter"][0][2]
    if len(measured["segmenter"]) == 1 and seg_info is not None:
        metrics["seg_train_seconds"] = seg_info["train_seconds"]
        metrics["seg_train_device"] = seg_info["train_device"]
    return metrics


def object_name_of(species: str) -> str:
    return object_name(embedded.BIRD_DIR / f"{species}.png")


def balanced_sample(val, n: int, seed: int):
    """Up to n val images, the same number from each group."""
    per_group = max(1, n // val.group.nunique())
    return (
        val.groupby("group", group_keys=False)
        .apply(lambda g: g.sample(min(per_group, len(g)), random_state=seed))
        .reset_index(drop=True)
    )


@torch.no_grad()
def classify(model, images: np.ndarray, size: int) -> np.ndarray:
    transform = eval_transform(size)
    batch = torch.stack([transform(Image.fromarray(im)) for im in images])
    return model(batch).argmax(1).numpy()


def save_grid(images, masks, predicted, repaints, class_names, out, rows: int = 8) -> None:
    columns = ["source", "mask (truth)", "segmenter", *[f"as {c}" for c in class_names]]
    pick = np.linspace(0, len(images) - 1, rows).astype(int)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.4 * len(columns), 1.4 * rows))
    for r, i in enumerate(pick):
        panels = [images[i], masks[i], predicted[i], *[repaints[c][i] for c in sorted(repaints)]]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(columns[c], fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def markdown(metrics, confusion, class_names, cfg, measured, judge_info) -> str:
    m = metrics
    header = "| intended \\ recognised | " + " | ".join(class_names) + " |"
    rows = [
        f"| {name} | " + " | ".join(str(v) for v in confusion[i]) + " |"
        for i, name in enumerate(class_names)
    ]
    table = [
        ('segmentation IoU (prompt "' + cfg.seg_prompt + '")', f"{m['seg_iou']:.3f}", "≥ 0.6"),
        ("repaints recognised as the intended class", f"{m['repaint_recognised']:.3f}", "≥ 0.75"),
        ("the judge on the unmodified sources", f"{m['classifier_acc_on_sources']:.3f}", ""),
        ("largest change of a pixel outside the mask", str(m["outside_mask_max_change"]), "0"),
    ]
    key, name, info = measured["diffusion"]
    return "\n".join(
        [
            "# Foundation models",
            "",
            "Measured on the embedded benchmark's val split (data/prepared), whatever data.root "
            "is. Models measured:",
            "",
            f"- Inpainting: `{key}` = `{name}`, {provenance(info, 'foundation')}; repainted at "
            f"{measured['side']} px, its own side.",
            f"- Segmenter: {measured['segmenter_kind']}: "
            + "; ".join(
                f"`{key}` = `{name}`, {provenance(info, 'foundation_segmenter')}"
                for key, name, info in measured["segmenter"]
            )
            + ".",
            f"- Judge: `{paths.JUDGE}` (the frozen `judge` stage), {judge_text(judge_info)}",
            "",
            "| measure | value | goal |",
            "|---|---|---|",
            *(f"| {name} | {value} | {goal} |" for name, value, goal in table),
            "",
            f'Segmenter prompt "{cfg.seg_prompt}". '
            f"Repaints: ground-truth bird outline dilated by {cfg.dilate} px, caption "
            f'"{cfg.prompt}" with a species of the intended class, {cfg.steps} steps, guidance '
            f"{cfg.guidance}.",
            "",
            header,
            "|---" * (len(class_names) + 1) + "|",
            *rows,
            "",
            "![source, masks, repaints](figures/foundation_repaint.png)",
            "",
        ]
    )


def provenance(info: dict | None, stage: str) -> str:
    """How a measured model came to be: trained by a foundation stage, or as downloaded."""
    if info is None:
        return "a checkpoint as downloaded (not trained by this project)"
    device = info.get("device_name", info["train_device"])
    text = f"trained by the `{stage}` stage in {info['train_seconds']:.0f} s on {device}"
    text += f" (steps: {info.get('steps', {})}"
    if "corpus_size" in info:
        text += f"; corpus of {info['corpus_size']} composites, {info['objects']} objects"
    return text + ")"


def judge_text(info: dict) -> str:
    recipe = info["recipe"]
    text = (
        f"group-balanced ERM ({recipe['arch']} fine-tuned from `{recipe['weights']}`, "
        f"{recipe['epochs']} epochs, seed {info['seed']}) on the train split of "
        f"`{info['trained_on']}` at {info['image_size']} px; val WGA "
        f"{info['val_wga']:.3f} (epoch {info['best_epoch']}); trained once in "
        f"{info['train_seconds']:.0f} s on {info['train_device']} and committed, so neither "
        "data.root nor a baseline's retraining changes it."
    )
    if info["stale"]:
        text += (
            f" **Warning: it was trained on another build of `{info['trained_on']}` than the "
            "one measured here** (prepare changed since): rebuild it with `dvc unfreeze judge "
            "&& dvc repro -f judge && dvc freeze judge`."
        )
    return text
