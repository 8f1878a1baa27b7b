"""The DDB stages on tiny models and a handful of images: select, segment, generate, score,
prune, retrain."""

from __future__ import annotations

import dataclasses
import filecmp
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ddb import paths
from ddb.data.dataset import WATERBIRDS_GROUPS, DataError, read_metadata
from ddb.models.classifier import build_classifier, save_classifier
from ddb.models.inversion import save_learned_embeds
from ddb.stages import generate, prune, retrain, score, segment, select
from tests.conftest import REPO, default_section, indexed, tiny_config, tiny_params
from tests.tiny_models import tiny_inpaint_pipeline

# ---- select -------------------------------------------------------------------------


def _outputs(losses_by_class: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for y, losses in losses_by_class.items():
        for i, loss in enumerate(losses):
            p = float(np.exp(-loss))
            rows.append(
                {
                    "img_filename": f"c{y}/{i:03d}.png",
                    "y": y,
                    "loss": loss,
                    "prob_0": p if y == 0 else 1 - p,
                    "prob_1": p if y == 1 else 1 - p,
                }
            )
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # order must not matter


def test_select_takes_lowest_loss_sources_and_highest_loss_inversion_images():
    outputs = _outputs({0: [0.5, 0.01, 2.0, 0.02, 3.0, 0.3], 1: [0.05, 1.5, 0.04, 0.9]})
    chosen = select.select_images(outputs, 2, sources_per_class=2, inversion_per_class=2)
    by = {(y, r): list(g.sort_values("rank").loss) for (y, r), g in chosen.groupby(["y", "role"])}
    assert by[(0, "source")] == [0.01, 0.02]
    assert by[(0, "inversion")] == [3.0, 2.0]
    assert by[(1, "source")] == [0.04, 0.05]
    assert by[(1, "inversion")] == [1.5, 0.9]
    # an image is a source or an inversion image, never both
    assert not chosen.img_filename.duplicated().any()
    summary = select.selection_summary(chosen, ["landbird", "waterbird"])
    assert summary["landbird"]["psi"] == pytest.approx(np.mean(np.exp([-0.01, -0.02])))


def test_select_with_fewer_images_than_asked_keeps_what_there_is():
    chosen = select.select_images(_outputs({0: [0.1, 0.2], 1: [0.3]}), 2, 5, 5)
    assert (chosen.role == "source").sum() == 3 and (chosen.role == "inversion").sum() == 0


# ---- segment ------------------------------------------------------------------------


def test_box_mask_covers_the_dilated_outline():
    mask = np.zeros((16, 16), bool)
    mask[4:8, 5:7] = True
    mask[9, 10] = True
    outline = segment.shape_mask(mask, dataclasses.replace(tiny_config().segment, dilate=1))
    box = segment.shape_mask(
        mask, dataclasses.replace(tiny_config().segment, dilate=1, mask_shape="box")
    )
    assert outline[3, 5] and not outline[3, 4] and outline[10, 10]  # grown by 1 px, 4-connected
    assert (box >= outline).all() and box[3:11, 4:12].all() and box.sum() == 8 * 8


# ---- generate -----------------------------------------------------------------------


@pytest.fixture
def generation_inputs(in_tmp_repo: Path, waterbirds_folder: Path):
    """A project folder with segment and invert outputs written by hand, and a tiny pipeline."""
    pipe_dir = in_tmp_repo / "pipe"
    tiny_inpaint_pipeline().save_pretrained(pipe_dir)
    table = read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)
    train = table[table.split == 0]
    sources = pd.concat([train[train.y == 0].head(3), train[train.y == 1].head(2)])
    rows = []
    (paths.SEGMENT / "masks").mkdir(parents=True)
    for i, row in enumerate(sources.itertuples()):
        mask = np.zeros((24, 24), np.uint8)
        mask[6:18, 6:18] = 255  # the bright square of the fixture's images
        name = f"masks/{i:05d}.png"
        Image.fromarray(mask).save(paths.SEGMENT / name)
        rows.append(
            {
                "img_filename": row.img_filename,
                "y": row.y,
                "role": "source",
                "mask_filename": name,
                "detected": i != 1,  # one source without a detection: skipped
            }
        )
    pd.DataFrame(rows).to_csv(paths.SEGMENT / "segments.csv", index=False)
    torch.manual_seed(0)
    for name in ("landbird", "waterbird"):
        save_learned_embeds(
            paths.INVERT / name / "learned_embeds.safetensors", f"<{name}>", torch.randn(1, 32)
        )
    config = indexed(tiny_config(waterbirds_folder))
    return dataclasses.replace(
        config,
        models=dataclasses.replace(config.models, diffusion=str(pipe_dir)),
        generate=dataclasses.replace(
            config.generate, steps=2, shard_size=2, batch_size=2, samples_per_source=1
        ),
    )


def test_generate_labels_with_the_target_and_keeps_pixels_outside_the_mask(generation_inputs):
    config = generation_inputs
    generate.run(config)
    manifest = pd.read_csv(paths.GENERATE / "manifest.csv")
    assert len(manifest) == 4  # 4 detected sources x 1 other class
    assert (manifest.y != manifest.source_y).all()
    assert set(manifest.prompt) == {"a photo of a <landbird> bird", "a photo of a <waterbird> bird"}
    assert (manifest.prompt.str.contains("<waterbird>") == (manifest.y == 1)).all()
    assert (manifest.split == 0).all()
    changed_inside = 0
    for row in manifest.itertuples():
        source = np.asarray(Image.open(Path(config.data.root) / row.source_filename).convert("RGB"))
        sample = np.asarray(Image.open(paths.GENERATE / row.img_filename))
        mask = np.asarray(Image.open(paths.SEGMENT / row.mask_filename)) > 0
        assert sample.shape == source.shape
        assert (sample[~mask] == source[~mask]).all()  # paste-back: exactly the source's
        changed_inside += int((sample[mask] != source[mask]).any())
    assert changed_inside == len(manifest)


def test_generate_refuses_a_mask_of_another_size_than_its_source(generation_inputs):
    Image.new("L", (16, 16), 255).save(paths.SEGMENT / "masks/00000.png")  # sources: 24 px
    with pytest.raises(DataError, match=r"masks/00000\.png: mask is 16x16 .* image is 24x24"):
        generate.run(generation_inputs)
    assert not paths.GENERATE.exists()  # nothing published


def test_generate_resumes_after_an_interruption_and_ends_equal(
    generation_inputs, monkeypatch, tmp_path
):
    config = generation_inputs
    reference = _reference_run(config, tmp_path / "uninterrupted")

    calls = []
    write_shard = generate.write_shard

    def interrupted(*args):
        if len(calls) == 1:
            raise KeyboardInterrupt  # stopped while working on the second shard
        calls.append(args)
        write_shard(*args)

    monkeypatch.setattr(generate, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate.run(config)
    work = generate.partial_dir(paths.GENERATE)
    assert sorted(p.name for p in (work / "shards").iterdir()) == ["shard_00000"]
    assert not paths.GENERATE.exists()  # no half-generated output where score would read it
    # what a SIGKILL mid-shard leaves (no `finally` runs): the resume must not publish it
    leftover = work / "shards/.shard_00001.x1y2/shard_00001"
    leftover.mkdir(parents=True)
    (leftover / "000002.png").write_bytes(b"half")
    monkeypatch.setattr(generate, "write_shard", lambda *a: calls.append(a) or write_shard(*a))
    generate.run(config)
    assert len(calls) == 2  # the finished shard was not generated again
    assert not work.exists()  # the finished work folder became the output
    compare = filecmp.dircmp(reference, paths.GENERATE)
    assert _same_tree(reference, paths.GENERATE), compare.report_full_closure()


def test_generate_discards_shards_made_under_other_params(generation_inputs, monkeypatch):
    config = generation_inputs
    write_shard = generate.write_shard

    def interrupted(*args):
        write_shard(*args)
        raise KeyboardInterrupt  # stopped after the first shard

    monkeypatch.setattr(generate, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate.run(config)
    first = (generate.partial_dir(paths.GENERATE) / "shards/shard_00000/000000.png").read_bytes()
    monkeypatch.setattr(generate, "write_shard", write_shard)
    changed = dataclasses.replace(
        config, generate=dataclasses.replace(config.generate, seed=config.generate.seed + 1)
    )
    generate.run(changed)
    assert (paths.GENERATE / "shards/shard_00000/000000.png").read_bytes() != first


def test_padding_and_batch_company_change_no_image():
    """Each image has its own seed: alone, in a batch, or in a batch padded to a fixed
    shape with copies of its last job (as on a GPU), it comes out the same."""
    pipe = generate.optimize_pipeline(tiny_inpaint_pipeline())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(3)]
    masks = [np.zeros((24, 24), bool) for _ in range(3)]
    for i, mask in enumerate(masks):
        mask[4 : 16 + i, 6:18] = True
    prompts, seeds = ["a photo of a bird", "a photo of a crow", "a photo of a bird"], [5, 6, 7]
    cfg = default_section("generate", steps=2)
    together = generate.generate_batch(pipe, images, masks, prompts, seeds, cfg)
    padded = generate.generate_batch(pipe, images, masks, prompts, seeds, cfg, pad_to=5)
    alone = [
        generate.generate_batch(pipe, [im], [m], [p], [s], cfg)[0]
        for im, m, p, s in zip(images, masks, prompts, seeds)
    ]
    assert len(padded) == 3
    for a, b, c in zip(together, padded, alone):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_optimize_pipeline_leaves_a_cpu_pipeline_as_loaded(caplog):
    """On CPU, where the committed outputs were made: float32, default memory layout, no
    compilation (generate.compile is ignored, with a log line); attention is SDPA, the
    processor diffusers already picks, and a classic processor is replaced by it."""
    from diffusers.models.attention_processor import AttnProcessor

    pipe = tiny_inpaint_pipeline()
    pipe.vae.set_attn_processor(AttnProcessor())
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="ddb.stages.generate"):
        assert generate.optimize_pipeline(pipe, compile=True) is pipe
    assert "generate.compile is ignored on cpu" in caplog.text
    for model in (pipe.unet, pipe.vae):
        assert {type(p).__name__ for p in model.attn_processors.values()} == {"AttnProcessor2_0"}
        assert model._compiled_call_impl is None
        assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(weights[k], v) for k, v in pipe.unet.state_dict().items())


def test_generate_dtype_auto_is_float16_on_a_gpu_and_float32_on_cpu():
    assert generate.resolve_dtype("auto", "cpu") == torch.float32  # the committed outputs
    assert generate.resolve_dtype("auto", "cuda") == torch.float16  # the paper's
    assert generate.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert generate.resolve_dtype("float32", "cuda") == torch.float32


def test_cpu_batch_size_is_what_the_available_memory_holds():
    gib = 2**30
    assert generate.cpu_batch_size(32, per_image=1 * gib, available=10 * gib) == 8  # 80% of 10
    assert generate.cpu_batch_size(32, per_image=1 * gib, available=100 * gib) == 32  # the cap
    assert generate.cpu_batch_size(32, per_image=4 * gib, available=2 * gib) == 1  # at least 1


def test_generate_lowers_the_batch_on_cpu_with_a_log_line(monkeypatch, caplog):
    """The memory figure is mocked: no gigabytes are allocated. A batch that fits is kept."""
    pipe = tiny_inpaint_pipeline()
    config = tiny_config(Path("unused"))
    config = dataclasses.replace(
        config, generate=dataclasses.replace(config.generate, batch_size=32, guidance=2.0)
    )
    per_image = generate.image_bytes(pipe, guidance=2.0)
    # SD2's 1.25 GiB at 512 px, scaled by the tiny pipeline's side, UNet width, guidance
    side, width = generate.pipeline_size(pipe), pipe.unet.config.block_out_channels[0]
    assert per_image == pytest.approx(1.25 * 2**30 * (side / 512) ** 2 * width / 320)
    assert generate.image_bytes(pipe, guidance=1.0) == pytest.approx(per_image / 2)

    def memory(available):
        return lambda: type("Memory", (), {"available": available})()

    monkeypatch.setattr(generate.psutil, "virtual_memory", memory(5 * per_image))
    with caplog.at_level(logging.INFO, logger="ddb.stages.generate"):
        lowered = generate.with_cpu_batch_size(config, pipe)
    assert lowered.generate.batch_size == 4  # 80% of 5 images' worth
    assert dataclasses.replace(lowered.generate, batch_size=32) == config.generate
    assert "generate.batch_size 32 lowered to 4 on CPU" in caplog.text
    monkeypatch.setattr(generate.psutil, "virtual_memory", memory(1000 * per_image))
    assert generate.with_cpu_batch_size(config, pipe) is config


def _reference_run(config, folder: Path) -> Path:
    """An uninterrupted, single-process generate run, moved to `folder` to compare against."""
    generate.run(config)
    paths.GENERATE.rename(folder)
    return folder


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


# ---- score --------------------------------------------------------------------------


def test_attribution_score_is_the_positive_share_inside_the_mask():
    attribution = torch.zeros(3, 4, 4)
    mask = torch.zeros(3, 4, 4)
    mask[:, :2] = 1
    attribution[0, 0, 0] = 3.0  # all evidence for the target, inside the mask
    attribution[1, 0, 0], attribution[1, 3, 3] = 1.0, 3.0  # most of it outside
    attribution[2, 0, 0], attribution[2, 1, 1] = 1.0, -1.0  # inside, but half against
    scores = score.attribution_scores(attribution, mask)
    assert scores["attr_score"] == pytest.approx([1.0, 0.25, 0.5])
    assert scores["attr_sum"] == pytest.approx([3.0, 1.0, 0.0])
    zero = score.attribution_scores(torch.zeros(1, 4, 4), mask[:1])
    assert zero["attr_score"] == pytest.approx([0.0])


def test_integrated_gradients_vanish_where_sample_and_source_agree():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2).eval()
    source = torch.randn(2, 3, 32, 32)
    sample = source.clone()
    sample[:, :, 8:20, 8:20] += 1.0
    attribution = score.integrated_gradients(model, sample, source, torch.tensor([0, 1]), 8)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:20, 8:20] = False
    assert attribution.shape == (2, 32, 32)
    assert attribution[:, outside].abs().max() == 0
    assert attribution[:, ~outside].abs().sum() > 0


@pytest.mark.parametrize("per_pass", [12, 7, 2, 1])
def test_integrated_gradients_in_passes_equal_one_pass_within_the_budget(per_pass):
    """Passes of whole steps (12, 7: at least one step of all 3 samples) or of fewer samples
    (2, 1) give one pass's attributions up to float rounding, never above `per_pass`
    images a forward pass, and every one of the 3 x 6 path points once."""
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2).eval()
    x_new, x_source = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    target = torch.tensor([1, 0, 1])
    whole = score.integrated_gradients(model, x_new, x_source, target, 6)
    seen = []
    hook = model.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    try:
        parts = score.integrated_gradients(model, x_new, x_source, target, 6, per_pass)
    finally:
        hook.remove()
    assert max(seen) <= per_pass and sum(seen) == 3 * 6
    scale = whole.abs().max().item()
    assert scale > 0
    assert torch.allclose(parts, whole, rtol=1e-4, atol=1e-5 * scale)


def test_images_per_pass_follow_the_budget_and_the_image_size():
    model = build_classifier("resnet18", 2).eval()
    small, large = score.activation_bytes(model, 64), score.activation_bytes(model, 128)
    assert large / small == pytest.approx(4, rel=0.05)  # activations grow with the pixels
    assert score.images_per_pass(model, 64, 1.0) == 2**30 // small
    assert score.images_per_pass(model, 64, 1e-9) == 1  # never below one image


def test_the_embedded_default_keeps_integrated_gradients_in_one_pass():
    """params.yaml as committed: batch_size x ig_steps images fit score.ig_memory_gb, so the
    committed scores are computed as before, in one pass."""
    from ddb.config import load_config

    config = load_config(REPO / "params.yaml")
    model = build_classifier(config.classifier.arch, 2).eval()
    per_pass = score.images_per_pass(model, config.data.image_size, config.score.ig_memory_gb)
    assert per_pass >= config.score.batch_size * config.score.ig_steps


def test_score_config_checks_the_memory_budget():
    from ddb.config import ConfigError

    with pytest.raises(ConfigError, match="score.ig_memory_gb"):
        default_section("score", ig_memory_gb=0.0)


def test_score_on_cpu_is_the_float32_computation_and_autocast_stays_close():
    """score.dtype auto on CPU: no autocast, the numbers of plain float32 softmax and of
    captum's IG with every step of every sample in one pass, bit for bit (what made the
    committed scores). bfloat16 autocast, a GPU's default, computes the same, coarser."""
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    model = build_classifier("resnet18", 2).eval()
    x_new, x_source = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    mask = (torch.rand(3, 32, 32) > 0.5).float()
    old, new = np.array([0, 1, 0]), np.array([1, 0, 1])
    cpu = torch.device("cpu")
    assert score.autocast_dtype("auto", cpu) is None
    assert score.autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    args = (model, x_new, x_source, mask, old, new, 4, model)
    result = score.score_tensors(*args, score.autocast_dtype("auto", cpu))
    rows = torch.arange(3)
    with torch.no_grad():
        probs_new, probs_source = torch.softmax(model(x_new), 1), torch.softmax(model(x_source), 1)
    ig = IntegratedGradients(model).attribute(
        x_new, baselines=x_source, target=torch.as_tensor(new), n_steps=4, internal_batch_size=12
    )
    ig = ig.sum(1)
    assert np.array_equal(result["p_new"], probs_new[rows, new].numpy())
    assert np.array_equal(result["p_old"], probs_new[rows, old].numpy())
    assert np.array_equal(result["p_old_source"], probs_source[rows, old].numpy())
    assert np.array_equal(result["p_independent"], probs_new[rows, new].numpy())
    assert np.array_equal(result["attribution"], ig.numpy().astype(np.float16))
    assert np.array_equal(result["attr_sum"], (ig * mask).flatten(1).sum(1).numpy())
    low = score.score_tensors(*args, torch.bfloat16)
    assert low["p_new"] == pytest.approx(result["p_new"], abs=0.05)
    assert low["attr_score"] == pytest.approx(result["attr_score"], abs=0.1)


# ---- prune --------------------------------------------------------------------------


def _scores():
    return pd.DataFrame(
        {
            "source_y": [0, 0, 1, 1],
            "y": [1, 1, 0, 0],
            "p_old": [0.99, 0.5, 0.2, 0.85],
            "p_old_source": [0.995, 0.99, 0.25, 0.9],
            "attr_score": [0.9, 0.1, 0.6, 0.4],
        }
    )


@pytest.mark.parametrize(
    "flags, kept",
    [
        ({}, [True] * 4),
        ({"psi": True}, [False, True, True, True]),  # 0.99 >= Psi_0 = 0.98
        ({"paired": True}, [False, True, False, False]),  # falls by < 0.1 except row 1
        ({"attribution": True}, [True, False, True, True]),  # 0.1 < 0.3
        ({"psi": True, "attribution": True}, [False, False, True, True]),
    ],
)
def test_prune_conditions_on_hand_made_scores(flags, kept):
    off = {"psi": False, "paired": False, "attribution": False}
    cfg = default_section("prune", **{**off, **flags}, delta=0.1, threshold=0.3)
    psi = np.array([0.98, 0.9])
    decisions = prune.prune_decisions(_scores(), psi, cfg)
    assert list(decisions.kept) == kept


def test_prune_threshold_moves_the_cut():
    cfg = default_section("prune", psi=False, attribution=True, threshold=0.5)
    decisions = prune.prune_decisions(_scores(), np.array([1.0, 1.0]), cfg)
    assert list(decisions.kept) == [True, False, True, False]


# ---- retrain ------------------------------------------------------------------------


def test_subset_loss_weights_per_subset_means_and_skips_absent_subsets():
    loss = retrain.subset_loss([2.0, 10.0])
    losses = torch.tensor([1.0, 3.0, 4.0, 100.0])
    subset = torch.tensor([0, 0, 1, 2])
    assert loss(losses, subset).item() == pytest.approx(2.0 + 2 * 4.0 + 10 * 100.0)
    only_original = loss(torch.tensor([1.0, 3.0]), torch.tensor([0, 0]))
    assert only_original.item() == pytest.approx(2.0)  # no NaN from an empty subset


def test_augmented_set_carries_subset_ids_not_groups(waterbirds_folder, tmp_path):
    config = tiny_config(waterbirds_folder)
    table = read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)
    train = table[table.split == 0]
    generated = pd.DataFrame({"img_filename": train.img_filename[:3].to_list(), "y": [1, 0, 1]})
    dataset = retrain.augmented_train_set(
        waterbirds_folder, train, waterbirds_folder, generated, 24, config.classifier
    )
    subsets = [int(dataset[i][2]) for i in range(len(dataset))]
    assert subsets == [0] * len(train) + [2, 1, 2]
    assert [int(dataset[len(train) + i][1]) for i in range(3)] == [1, 0, 1]


def test_retrain_reads_no_group_label_of_generated_samples(in_tmp_repo, waterbirds_folder):
    """The manifest's place column is garbage here; retrain must not care, and must work
    when batches hold no generated sample (a single generated image, batch size 8)."""
    config = indexed(tiny_config(waterbirds_folder))
    config = dataclasses.replace(config, retrain=dataclasses.replace(config.retrain, epochs=1))
    torch.manual_seed(0)
    save_classifier(build_classifier("resnet18", 2), "resnet18", 2, paths.ERM / "model.pt")
    table = read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)
    source = table[table.split == 0].img_filename.iloc[0]
    image = Image.open(waterbirds_folder / source)
    (paths.GENERATE / "shards").mkdir(parents=True)
    image.save(paths.GENERATE / "shards/0.png")
    manifest = pd.DataFrame(
        {"img_filename": ["shards/0.png"], "y": [1], "split": [0], "place": ["not a place"]}
    )
    manifest.to_csv(paths.GENERATE / "manifest.csv", index=False)
    retrain.run_no_prune(config)
    history = pd.read_csv(paths.DDB_NO_PRUNE / "history.csv")
    assert np.isfinite(history.train_loss).all()
    assert (paths.DDB_NO_PRUNE / "model.pt").is_file()


class FakeState:
    """accelerate's PartialState as process `index` of `count` sees it (no real processes)."""

    def __init__(self, index: int, count: int):
        self.process_index, self.num_processes = index, count
        self.is_main_process = self.is_local_main_process = index == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        pass


def test_generate_shards_split_by_process_index_add_up_to_one_run(
    generation_inputs, monkeypatch, tmp_path
):
    config = generation_inputs
    reference = _reference_run(config, tmp_path / "one_process")
    # what the main process does before the first barrier: prepare the output folder
    segments = pd.read_csv(paths.SEGMENT / "segments.csv")
    jobs = generate.plan_jobs(segments, ("landbird", "waterbird"), config)
    work = generate.partial_dir(paths.GENERATE)
    n_shards = -(-len(jobs) // config.generate.shard_size)
    generate.prepare_output(work, generate.job_fingerprint(config, jobs), n_shards)
    written = {}
    write_shard = generate.write_shard
    for index in (1, 0):  # the second process first: the main one writes the manifest
        monkeypatch.setattr(generate, "process_state", lambda i=index: FakeState(i, 2))
        monkeypatch.setattr(
            generate,
            "write_shard",
            lambda *a, i=index: written.setdefault(i, []).append(a[2].name) or write_shard(*a),
        )
        generate.run(config)
    assert written == {1: ["shard_00001"], 0: ["shard_00000"]}
    assert _same_tree(reference, paths.GENERATE)


def _run_stage(cwd: Path, stage: str, processes: int) -> str:
    """`python -m ddb <stage>` in `cwd`, as `processes` processes under torchrun (gloo on
    CPU) or, for one, plain; one thread each, so that both compute the same bits."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc_per_node", str(processes)]
    command = [*launch, "-m", "ddb"] if processes > 1 else [sys.executable, "-m", "ddb"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    out = subprocess.run(
        [*command, stage], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"{stage} x{processes}:\n{out.stdout}\n{out.stderr[-4000:]}"
    return out.stderr


@pytest.mark.slow
def test_generate_and_score_in_two_processes_equal_one(generation_inputs, tmp_path):
    """torchrun --nproc_per_node 2 (gloo between CPU processes): generate's shards and
    score's batches are split by process index, and the merged outputs are one process's."""
    config = generation_inputs
    Path("params.yaml").write_text(
        tiny_params(
            config.data.root,
            models={"diffusion": config.models.diffusion},
            generate={"steps": 2, "shard_size": 2, "batch_size": 2, "samples_per_source": 1},
            score={"batch_size": 1, "ig_steps": 3},  # 4 batches: 0, 2 and 1, 3 per process
        )
    )
    torch.manual_seed(0)
    save_classifier(build_classifier("resnet18", 2), "resnet18", 2, paths.ERM / "model.pt")
    for stage, output in (("generate", paths.GENERATE), ("score", paths.SCORE)):
        _run_stage(Path.cwd(), stage, 1)
        reference = output.rename(tmp_path / f"{stage}_one")
        log = _run_stage(Path.cwd(), stage, 2)
        share = "1 to do here" if stage == "generate" else "in 4 batches, 2 here"
        assert log.count(share) == 2, log  # two processes, each its half
        assert _same_tree(reference, output), stage
        if stage == "generate":  # score reads it
            assert len(pd.read_csv(output / "manifest.csv")) == 4
    assert not paths.SCORE.with_name("score.parts").exists()
    assert len(pd.read_csv(paths.SCORE / "scores.csv")) == 4
