"""LISA (ddb.methods.lisa) computes what its reference code computes, trains end to end, and
its params are checked.

The reference is huaxiuyao/LISA @c857a6b, `subpopulation_shifts/`: `train.py` (rand_bbox,
mix_up, cut_mix_up, mix_forward, run_epoch_mix_every_batch) and `loss.py`
(LossComputer.loss). The transcriptions below keep its calls and their order (the global
NumPy random state, seeded), with `.cuda()`, the model call and the logging bookkeeping
dropped, and `np.int` (removed in NumPy 1.24) written `int`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from ddb.config import ConfigError, profile_config
from ddb.data.dataset import WATERBIRDS_GROUPS, ImageTable, load_dataset
from ddb.methods import LABELS, lisa
from ddb.models.classifier import eval_transform, load_classifier
from ddb.stages.evaluate import trained_models
from ddb.training import predict, save_result
from tests.conftest import REPO, default_section, load_config_text, recipe, tiny_config, tiny_params

# ---- the reference, transcribed ------------------------------------------------------------


def reference_rand_bbox(size, lam):
    # train.py rand_bbox
    W = size[2]
    H = size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w = int(W * cut_rat)  # np.int there
    cut_h = int(H * cut_rat)
    cx = np.random.randint(W)
    cy = np.random.randint(H)
    bbx1 = np.clip(cx - cut_w // 2, 0, W)
    bby1 = np.clip(cy - cut_h // 2, 0, H)
    bbx2 = np.clip(cx + cut_w // 2, 0, W)
    bby2 = np.clip(cy + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def reference_mix_up(args, x1, x2, y1, y2):
    # train.py mix_up
    length = min(len(x1), len(x2))
    x1, x2, y1, y2 = x1[:length], x2[:length], y1[:length], y2[:length]
    n_classes = y1.shape[1]
    bsz = len(x1)
    lam = np.random.beta(args.mix_alpha, args.mix_alpha, [bsz, 1])
    l_x = np.tile(lam[..., None, None], (1, *x1.shape[1:]))
    l_y = np.tile(lam, [1, n_classes])
    mixed_x = (
        torch.tensor(l_x, dtype=torch.float32) * x1
        + torch.tensor(1 - l_x, dtype=torch.float32) * x2
    )
    mixed_y = (
        torch.tensor(l_y, dtype=torch.float32) * y1
        + torch.tensor(1 - l_y, dtype=torch.float32) * y2
    )
    return mixed_x, mixed_y


def reference_cut_mix_up(args, x1, x2, y1, y2):
    # train.py cut_mix_up
    length = min(len(x1), len(x2))
    x1, x2, y1, y2 = x1[:length], x2[:length], y1[:length], y2[:length]
    input = torch.cat([x1, x2])
    target = torch.cat([y1, y2])
    rand_index = torch.cat([torch.arange(len(y2)) + len(y1), torch.arange(len(y1))])
    lam = np.random.beta(args.alpha, args.alpha)
    target_a = target
    target_b = target[rand_index]
    bbx1, bby1, bbx2, bby2 = reference_rand_bbox(input.size(), lam)
    input[:, :, bbx1:bbx2, bby1:bby2] = input[rand_index, :, bbx1:bbx2, bby1:bby2]
    lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (input.size()[-1] * input.size()[-2]))
    return input, lam * target_a + (1 - lam) * target_b


def reference_mix_forward(args, x, y_onehot):
    # train.py mix_forward, up to the model call
    mix = reference_cut_mix_up if args.cut_mix else reference_mix_up
    if len(x) == 4:
        mix_type = 1 if np.random.rand() < args.mix_ratio else 2
        if mix_type == 1:
            mix_group_1 = [x[0], x[1], y_onehot[0], y_onehot[1]]
            mix_group_2 = [x[2], x[3], y_onehot[2], y_onehot[3]]
        else:
            mix_group_1 = [x[0], x[2], y_onehot[0], y_onehot[2]]
            mix_group_2 = [x[1], x[3], y_onehot[1], y_onehot[3]]
        mixed_x_1, mixed_y_1 = mix(args, *mix_group_1)
        mixed_x_2, mixed_y_2 = mix(args, *mix_group_2)
        return torch.cat([mixed_x_1, mixed_x_2]), torch.cat([mixed_y_1, mixed_y_2])
    all_mix_x, all_mix_y = [], []
    for i in range(len(x)):
        bsz = len(x[i])
        mixed_x, mixed_y = mix(
            args,
            x[i][: bsz // 2],
            x[i][bsz // 2 :],
            y_onehot[i][: bsz // 2],
            y_onehot[i][bsz // 2 :],
        )
        all_mix_x.append(mixed_x)
        all_mix_y.append(mixed_y)
    return torch.cat(all_mix_x), torch.cat(all_mix_y)


def reference_mix_loss(yhat, y_onehot):
    # loss.py LossComputer.loss, mix_up and is_training, not robust
    per_sample_losses = -F.log_softmax(yhat, dim=-1) * y_onehot
    per_sample_losses = per_sample_losses.sum(-1)
    return per_sample_losses.mean()


def reference_epoch_steps(group_sizes, batch_size):
    # run_expt.py main (a shuffled loader per non-empty group) and train.py
    # run_epoch_mix_every_batch (len_dataloader = np.min(length))
    loaders = {}
    group_array = np.repeat(np.arange(len(group_sizes)), group_sizes)
    data = TensorDataset(torch.as_tensor(group_array))
    for i in range(len(group_sizes)):
        idxes = np.where(group_array == i)[0]
        if len(idxes) == 0:
            continue
        loaders[i] = DataLoader(Subset(data, idxes), batch_size=batch_size, shuffle=True)
    return np.min([len(loader) for loader in loaders.values()])


# ---- (a) ours against the reference --------------------------------------------------------


def seeded_batches(sizes, seed: int, n_classes: int = 2, classes=(0, 0, 1, 1)):
    """One batch per loader: random images (3 x 9 x 7, not square, so rows and columns
    cannot be swapped unnoticed) and one-hot labels of each loader's class."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randn(n, 3, 9, 7, generator=gen) for n in sizes]
    onehots = [F.one_hot(torch.full((n,), c), n_classes).float() for n, c in zip(sizes, classes)]
    return images, onehots


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
@pytest.mark.parametrize("group_by", ["group", "label"])
def test_mixed_batches_match_mix_forward(mixing, group_by):
    cfg = default_section(
        "baselines.lisa", group_by=group_by, mixing=mixing, mix_ratio=0.5, mix_alpha=2.0
    )
    args = SimpleNamespace(mix_ratio=0.5, mix_alpha=2.0, alpha=0.2, cut_mix=mixing == "cutmix")
    # a short last batch in one loader: pairs are cut to the shorter batch
    sizes, classes = ([6, 6, 5, 6], (0, 0, 1, 1)) if group_by == "group" else ([7, 6], (0, 1))
    for seed in range(12):  # both pair types come up (rand() < 0.5 per step)
        images, onehots = seeded_batches(sizes, seed, classes=classes)
        np.random.seed(seed)
        theirs = reference_mix_forward(args, [x.clone() for x in images], onehots)
        ours = lisa.mix_batches(images, onehots, cfg, np.random.RandomState(seed))
        assert ours[0].shape == theirs[0].shape
        assert torch.allclose(ours[0], theirs[0], atol=1e-6), seed
        assert torch.allclose(ours[1], theirs[1], atol=1e-6), seed


def test_the_loss_is_theirs_soft_label_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 2, generator=gen)
    weight = torch.rand(10, 1, generator=gen)
    target = torch.cat([weight, 1 - weight], 1)
    ours = lisa.soft_cross_entropy(logits, target).mean()
    assert ours.item() == pytest.approx(reference_mix_loss(logits, target).item(), abs=1e-6)
    # with one-hot targets it is the ordinary cross-entropy
    hard = F.one_hot(torch.arange(10) % 2, 2).float()
    plain = F.cross_entropy(logits, torch.arange(10) % 2)
    assert lisa.soft_cross_entropy(logits, hard).mean().item() == pytest.approx(plain.item(), 1e-6)


@pytest.mark.parametrize(
    "sizes, batch", [([3498, 184, 56, 1057], 16), ([60, 7, 4, 29], 2), ([20, 33], 16)]
)
def test_an_epoch_is_the_smallest_groups_batches(sizes, batch):
    assert lisa.steps_per_epoch(sizes, batch) == reference_epoch_steps(sizes, batch)
    if 56 in sizes:
        assert lisa.steps_per_epoch(sizes, batch) == 4  # Waterbirds: 56 images, 3.5 batches


# ---- the decisive properties, checked directly ---------------------------------------------


@pytest.mark.parametrize("ratio, same_class", [(1.0, True), (0.0, False)])
def test_mix_ratio_chooses_intra_label_or_intra_domain_pairs(ratio, same_class):
    # loaders 0..3 are groups 2y + place; give every image its group id as its pixels
    images = [torch.full((4, 1, 2, 2), float(g)) for g in range(4)]
    onehots = [F.one_hot(torch.full((4,), g // 2), 2).float() for g in range(4)]
    cfg = default_section("baselines.lisa", mix_ratio=ratio, mix_alpha=2.0)
    mixed, target = lisa.mix_batches(images, onehots, cfg, np.random.RandomState(0))
    assert len(mixed) == 8  # 2 pairs of batches, one image per pair
    lam = target[:, 0]  # intra-label: one class, weight 1; intra-domain: lambda
    first = mixed[:4, 0, 0, 0]  # group a mixed with group b: lam * a + (1 - lam) * b
    if same_class:
        assert torch.equal(target[:4], onehots[0]) and torch.equal(target[4:], onehots[2])
        assert torch.all((first > 0) & (first < 1))  # groups 0 and 1
    else:
        assert torch.all((lam > 0) & (lam < 1))
        assert torch.allclose(first, 2 * (1 - lam[:4]), atol=1e-6)  # groups 0 and 2


def test_cutmix_weights_each_label_by_its_pixels_and_pastes_both_ways():
    x1, x2 = torch.zeros(5, 3, 16, 16), torch.ones(5, 3, 16, 16)
    y1, y2 = F.one_hot(torch.zeros(5).long(), 2).float(), F.one_hot(torch.ones(5).long(), 2).float()
    rng = np.random.RandomState(3)
    images, target = lisa.cutmix(x1, x2, y1, y2, alpha=0.2, rng=rng)
    assert images.shape == (10, 3, 16, 16)
    share_of_x2 = images.mean((1, 2, 3))  # pixels that came from x2 (ones)
    assert torch.allclose(target[:, 1], share_of_x2, atol=1e-6)
    assert torch.allclose(share_of_x2[:5] + share_of_x2[5:], torch.ones(5), atol=1e-6)
    assert len(set(share_of_x2[:5].tolist())) == 1  # one box, one lambda per call
    assert 0 < share_of_x2[0] < 1  # this seed's box is neither empty nor the image


def test_mixup_draws_one_lambda_per_pair():
    x1, x2 = torch.zeros(50, 1, 2, 2), torch.ones(50, 1, 2, 2)
    y1, y2 = torch.tensor([[1.0, 0.0]] * 50), torch.tensor([[0.0, 1.0]] * 50)
    images, target = lisa.mixup(x1, x2, y1, y2, 2.0, np.random.RandomState(0))
    lam = target[:, 0]
    assert torch.allclose(images[:, 0, 0, 0], 1 - lam, atol=1e-6)
    assert len(set(lam.tolist())) == 50
    assert 0.35 < lam.mean().item() < 0.65  # Beta(2, 2) has mean 0.5


def test_loaders_follow_groups_or_labels_and_an_empty_one_names_the_key():
    train = pd.DataFrame({"y": [0, 0, 1, 1, 1, 0], "group": [0, 1, 2, 3, 3, 1]})
    rows = lisa.loader_rows(train, "group", WATERBIRDS_GROUPS)
    assert [r.tolist() for r in rows] == [[0], [1, 5], [2], [3, 4]]
    rows = lisa.loader_rows(train, "label", WATERBIRDS_GROUPS)
    assert [r.tolist() for r in rows] == [[0, 1, 5], [2, 3, 4]]
    no_minority = train[train["group"].isin([0, 3])]  # MetaShift's train: 2 of the 4 groups
    with pytest.raises(ConfigError, match="baselines.lisa.group_by.*landbird_water"):
        lisa.loader_rows(no_minority, "group", WATERBIRDS_GROUPS)
    assert len(lisa.loader_rows(no_minority, "label", WATERBIRDS_GROUPS)) == 2


# ---- (b) end to end ------------------------------------------------------------------------


def lisa_config(root, **lisa_keys):
    config = tiny_config(root)
    cfg = dataclasses.replace(
        config.baselines.lisa, recipe=recipe(batch_size=8, epochs=2), **lisa_keys
    )
    baselines = dataclasses.replace(config.baselines, methods=["lisa"], lisa=cfg)
    config = dataclasses.replace(config, baselines=baselines)
    return dataclasses.replace(config, classifier=cfg.recipe.applied_to(config.classifier))


@pytest.mark.parametrize("group_by, mixing", [("group", "mixup"), ("label", "cutmix")])
def test_lisa_trains_and_writes_what_evaluate_reads(
    waterbirds_folder, tmp_path, monkeypatch, group_by, mixing
):
    config = lisa_config(waterbirds_folder, group_by=group_by, mixing=mixing)
    root, table, groups = load_dataset(config.data)
    result = lisa.train(config, root, table, groups)
    history = pd.DataFrame(result.history)
    assert history["epoch"].tolist() == [1, 2]
    assert set(history.columns) == {"epoch", "train_loss", "train_acc", "val_wga", "val_mean_acc"}
    assert np.isfinite(history["train_loss"]).all()
    scores = list(zip(history["val_wga"], history["val_mean_acc"]))
    assert result.best_epoch == scores.index(max(scores)) + 1  # the first of the best
    monkeypatch.chdir(tmp_path)
    checkpoint = trained_models(config)["lisa"]  # where evaluate looks
    assert checkpoint == Path("models/baselines/lisa/model.pt")
    save_result(result, config.classifier.arch, groups.n_classes, checkpoint.parent)
    val = ImageTable(root, table[table["split"] == 1], eval_transform(config.data.image_size))
    reloaded = predict(load_classifier(checkpoint), val)["probs"]
    assert np.allclose(reloaded, predict(result.model, val)["probs"], atol=1e-4)
    assert pd.read_csv(checkpoint.parent / "history.csv")["epoch"].tolist() == [1, 2]


def test_lisa_is_registered_with_its_group_labels():
    assert LABELS["lisa"] == ("LISA", "yes", "yes (model selection)")


# ---- (c) params ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, named",
    [
        ({"group_by": "domain"}, "baselines.lisa.group_by"),
        ({"mixing": "manifold"}, "baselines.lisa.mixing"),
        ({"mix_ratio": 1.5}, "baselines.lisa.mix_ratio"),
        ({"mix_alpha": 0.0}, "baselines.lisa.mix_alpha"),
        ({"cutmix_alpha": -1.0}, "baselines.lisa.cutmix_alpha"),
    ],
)
def test_a_bad_lisa_value_names_its_key(keys, named):
    with pytest.raises(ConfigError, match=named):
        default_section("baselines.lisa", **keys)
    with pytest.raises(ConfigError, match=named):  # as params.yaml
        load_config_text(tiny_params(baselines={"lisa": keys}))


def test_lisa_params_that_do_not_fit_the_data_name_the_key():
    three_places = {"place_names": ["land", "water", "sky"]}
    with pytest.raises(ConfigError, match="baselines.lisa.group_by.*set it to label"):
        load_config_text(tiny_params(data=three_places))
    load_config_text(tiny_params(data=three_places, baselines={"lisa": {"group_by": "label"}}))
    one = {"lisa": {"recipe": {"batch_size": 1}}}
    with pytest.raises(ConfigError, match="baselines.lisa.recipe.batch_size"):
        load_config_text(tiny_params(baselines=one))
    bad_lr = {"lisa": {"recipe": {"lr": -1.0}}}
    with pytest.raises(ConfigError, match="baselines.lisa.recipe.lr"):
        load_config_text(tiny_params(baselines=bad_lr))


# LISA's README commands (huaxiuyao/LISA @c857a6b): --lr, --n_epochs, --cut_mix,
# --group_by_label; all with --batch_size 16, --weight_decay 1e-4, SGD
@pytest.mark.parametrize(
    "name, lr, epochs, mixing, group_by",
    [
        ("waterbirds", 1e-3, 300, "mixup", "group"),
        ("celeba", 1e-4, 50, "cutmix", "group"),
        ("metashift", 1e-3, 300, "cutmix", "label"),
    ],
)
def test_paper_profiles_run_lisas_readme_commands(name, lr, epochs, mixing, group_by):
    config = profile_config(name, REPO / "conf")
    assert "lisa" in config.baselines.methods
    cfg = config.baselines.lisa
    recipe = cfg.recipe.applied_to(config.classifier)
    assert (recipe.optimizer, recipe.batch_size, recipe.epochs) == ("sgd", 16, epochs)
    assert recipe.lr == pytest.approx(lr) and recipe.weight_decay == pytest.approx(1e-4)
    assert (recipe.momentum, recipe.schedule, recipe.augment) == (0.9, "constant", False)
    assert (cfg.mixing, cfg.group_by, cfg.mix_alpha, cfg.cutmix_alpha) == (
        mixing,
        group_by,
        2.0,
        0.2,
    )
