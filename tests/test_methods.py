"""Each baseline does what it claims, on tiny inputs."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from ddb.config import ConfigError
from ddb.data.dataset import load_dataset, split_table
from ddb.methods import LABELS, dfr, jtt, method
from ddb.methods.group_dro import GroupDROLoss
from ddb.models.classifier import build_classifier
from tests.conftest import default_section, tiny_config


class Constant(torch.nn.Module):
    """Predicts class 0 for every image."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([1.0, -1.0]))

    def forward(self, images):
        return self.bias.expand(len(images), 2)


def test_registry_names_the_labels_each_method_uses():
    assert set(LABELS) == {"group_balanced", "jtt", "group_dro", "dfr", "lisa", "dac", "disc"}
    train_groups = {name: label[1] for name, label in LABELS.items()}
    assert train_groups == {
        "group_balanced": "yes",
        "jtt": "no",
        "group_dro": "yes",
        "dfr": "no",
        "lisa": "yes",
        "dac": "no",
        "disc": "no (yes with reweight_groups)",
    }
    assert all(callable(method(name).train) for name in LABELS)
    with pytest.raises(KeyError, match="known: group_balanced"):
        method("jtt2")


def test_the_report_labels_methods_without_importing_torch():
    # every stage is a new process: importing torch would cost the report seconds
    code = "import sys, ddb.stages.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_jtt_upsamples_exactly_the_identification_errors(waterbirds_folder):
    _, table, _ = load_dataset(tiny_config(waterbirds_folder).data)
    train = split_table(table, "train")
    errors = jtt.error_set(Constant(), waterbirds_folder, train, 32)
    assert np.array_equal(errors, train["y"].to_numpy() == 1)  # every class-1 sample is wrong
    counts = np.bincount(jtt.upsampled_indices(errors, 20), minlength=len(train))
    assert set(counts[errors]) == {21} and set(counts[~errors]) == {1}  # 1 + lambda copies


def test_group_dro_weights_move_toward_the_worst_group():
    loss = GroupDROLoss(np.array([100, 10, 10, 100]), step_size=0.5)
    losses = torch.tensor([0.1, 0.1, 2.0, 2.0, 0.5, 0.5])
    group = torch.tensor([0, 0, 1, 1, 3, 3])  # group 2 absent from the batch
    for _ in range(3):
        total = loss(losses, group)
    q = loss.q
    assert q.sum().item() == pytest.approx(1.0)
    assert q[1] > q[3] > q[0]  # ordered by group loss
    assert q[2] < 0.25  # absent: not pushed up, only renormalised
    group_loss = torch.tensor([0.1, 2.0, 0.0, 0.5])
    assert total.item() == pytest.approx((q * group_loss).sum().item(), rel=1e-5)


def test_dfr_chooses_c_from_the_grid_and_learns_the_core_feature():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    place = rng.integers(0, 2, n)
    groups = 2 * y + place
    core = y + 0.3 * rng.normal(size=n)
    spurious = place + 0.1 * rng.normal(size=n)
    x = np.stack([core, spurious, rng.normal(size=n)], 1)
    grid = [1.0, 0.1, 0.01]
    cfg = default_section("dfr", C=grid, num_retrains=5)
    head = dfr.fit_head(x, y, groups, x, cfg, np.random.default_rng(0))
    assert head.C in grid and [h["C"] for h in head.history] == grid
    assert abs(head.coef[0, 0]) > abs(head.coef[0, 1])  # balanced val: the core feature wins


@pytest.mark.parametrize("split", ["by_group", "random"])
def test_dfr_tuning_halves_split_val_in_two(split):
    groups = np.repeat([0, 1, 2, 3], [40, 10, 6, 30])
    fit, held = dfr.tuning_halves(groups, split, np.random.default_rng(0))
    assert sorted([*fit, *held]) == list(range(len(groups)))  # a partition of val
    assert abs(len(fit) - len(held)) <= (4 if split == "by_group" else 1)
    if split == "by_group":  # every group halved
        assert np.bincount(groups[held]).tolist() == [20, 5, 3, 15]


def test_dfr_random_split_of_a_tiny_val_names_the_key():
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # two per group: a half often misses one
    cfg = default_section("dfr", tune_split="random")
    x, y = np.zeros((8, 2)), groups // 2
    with pytest.raises(ConfigError, match="dfr.tune_split.*use by_group"):
        for seed in range(20):
            dfr.fit_head(x, y, groups, x, cfg, np.random.default_rng(seed))


def test_dfr_head_folds_the_standardisation_into_the_layer():
    model = build_classifier("resnet18", 2).eval()
    d = model.fc.in_features
    rng = np.random.default_rng(1)
    head = dfr.Head(
        0.1, rng.normal(size=(1, d)), np.array([0.3]), rng.normal(size=d), rng.uniform(1, 2, d), []
    )
    new = dfr.install_head(model, head, 2)
    feats = rng.normal(size=(5, d)).astype(np.float32)
    logits = new.fc(torch.from_numpy(feats)).detach().numpy()
    expected = ((feats - head.mean) / head.std) @ head.coef[0] + head.intercept[0]
    assert np.allclose(logits[:, 1] - logits[:, 0], expected, atol=1e-4)
    assert model.fc.weight.abs().sum() != 0 and not torch.equal(model.fc.weight, new.fc.weight)


def test_dfr_reads_no_test_image_and_no_train_group(waterbirds_folder):
    config = tiny_config(waterbirds_folder)
    root, table, groups = load_dataset(config.data)
    erm_model = build_classifier("resnet18", 2)
    for name in split_table(table, "test")["img_filename"]:  # test images unreadable
        (root / name).write_bytes(b"")
    result = dfr.train(config, root, table, groups, erm_model)
    assert pd.DataFrame(result.history)["C"].tolist() == config.dfr.C
    # train images feed the scaler; their group labels (and places) must not matter
    is_train = table["split"] == 0
    scrambled = table.assign(
        group=np.where(is_train, 0, table["group"]), place=np.where(is_train, 0, table["place"])
    )
    again = dfr.train(config, root, scrambled, groups, erm_model)
    assert torch.equal(again.model.fc.weight, result.model.fc.weight)
    assert not torch.equal(result.model.fc.weight, erm_model.fc.weight)
