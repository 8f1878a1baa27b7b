import dataclasses
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from ddb import paths
from ddb.data.dataset import ImageTable, load_dataset, split_table
from ddb.methods.group_balanced import group_balanced_weights
from ddb.models.classifier import build_classifier, eval_transform, train_transform
from ddb.stages import erm
from ddb.training import Speed, predict, train_classifier, train_loader
from ddb.utils import seed_everything
from tests.conftest import indexed, tiny_config


def test_group_balanced_weights_give_every_group_the_same_total():
    groups = np.array([0] * 90 + [1] * 5 + [2] * 3 + [3] * 2)
    weights = group_balanced_weights(groups)
    totals = [weights[groups == g].sum() for g in range(4)]
    assert totals == pytest.approx([1.0] * 4)


def _fit(folder, model=None, batch_size=8, **weights):
    config = tiny_config(folder)
    cfg = dataclasses.replace(config.classifier, epochs=3, batch_size=batch_size, augment=False)
    root, table, groups = load_dataset(config.data)
    train = split_table(table, "train")
    seed_everything(0)
    model = model or build_classifier("resnet18", 2)
    result = train_classifier(
        model,
        ImageTable(root, train, train_transform(32, False)),
        ImageTable(root, split_table(table, "val"), eval_transform(32)),
        cfg,
        seed=0,
        **weights,
    )
    return result, predict(
        result.model, ImageTable(root, split_table(table, "test"), eval_transform(32))
    )


def test_selected_checkpoint_is_the_best_validation_wga(waterbirds_folder):
    result, _ = _fit(waterbirds_folder)
    history = pd.DataFrame(result.history)
    assert len(history) == 3
    best = history.loc[history.epoch == result.best_epoch, "val_wga"].item()
    assert best == history.val_wga.max()


@pytest.mark.parametrize("weighted", [False, True])
def test_a_last_batch_of_one_sample_does_not_stop_batchnorm(waterbirds_folder, weighted):
    # 28 train images in batches of 9 leave one image over: BatchNorm cannot train on it
    weights = {"sample_weights": np.ones(28)} if weighted else {}
    result, _ = _fit(waterbirds_folder, batch_size=9, **weights)
    assert len(result.history) == 3 and np.isfinite(result.history[-1]["train_loss"])


class BiasOnly(torch.nn.Module):
    """Ignores the image: its logits are a learned bias, so only the labels it sees count."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, images):
        return self.bias.expand(len(images), 2)


@pytest.mark.parametrize("kind", ["sample_weights", "loss_weights", "sample_indices"])
def test_weights_reach_the_loss(waterbirds_folder, kind):
    # All weight on one class (or an epoch of its rows only): the bias must favour that
    # class. A trainer that ignored them would see both classes equally often (14 and 14)
    # and favour neither.
    table = load_dataset(tiny_config(waterbirds_folder).data)[1]
    y = split_table(table, "train")["y"].to_numpy()
    for favoured in (0, 1):
        weights = (y == favoured).astype(float)
        value = np.flatnonzero(weights) if kind == "sample_indices" else weights
        result, _ = _fit(waterbirds_folder, model=BiasOnly(), **{kind: value})
        bias = result.model.bias.detach()
        assert bias[favoured] > bias[1 - favoured]


def test_an_epoch_of_sample_indices_is_those_rows_shuffled_by_the_seed():
    cfg = dataclasses.replace(tiny_config().classifier, batch_size=8)
    indices = np.concatenate([np.arange(30), [4, 4, 9]])  # 33 = 4 x 8 + 1 draws

    def epochs(seed, n=2):
        loader = train_loader(range(30), cfg, seed, Speed(), sample_indices=indices)
        return [list(loader.batch_sampler) for _ in range(n)]

    first = epochs(0)
    for batches in first:
        draws = Counter(i for batch in batches for i in batch)
        # the lone last draw is dropped (BatchNorm cannot train on one sample): 32 of 33,
        # each row at most as often as listed
        assert [len(b) for b in batches] == [8] * 4
        assert not draws - Counter(indices.tolist()) and draws[4] >= 2
    assert first == epochs(0) and first != epochs(1)  # the seed decides the order
    with pytest.raises(ValueError, match="not both"):
        train_loader(range(30), cfg, 0, Speed(), np.ones(30), indices)


def test_erm_stage_is_bit_for_bit_reproducible(in_tmp_repo, waterbirds_folder, monkeypatch):
    config = indexed(tiny_config(waterbirds_folder))
    erm.run(config)
    first_outputs = (paths.ERM / "train_outputs.csv").read_text()
    first_state = torch.load(paths.ERM / "model.pt", weights_only=True)["state_dict"]
    erm.run(config)
    assert (paths.ERM / "train_outputs.csv").read_text() == first_outputs
    second_state = torch.load(paths.ERM / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    outputs = pd.read_csv(paths.ERM / "train_outputs.csv")
    assert "group" not in outputs and "place" not in outputs  # DDB must not see train groups
    probs = outputs[["prob_0", "prob_1"]].to_numpy()
    assert probs.sum(1) == pytest.approx(1.0, abs=1e-5)
    expected_loss = -np.log(probs[np.arange(len(outputs)), outputs.y])
    assert outputs.loss.to_numpy() == pytest.approx(expected_loss, rel=1e-4)


def test_another_seed_gives_another_model(in_tmp_repo, waterbirds_folder):
    config = indexed(tiny_config(waterbirds_folder))
    erm.run(config)
    first = torch.load(paths.ERM / "model.pt", weights_only=True)["state_dict"]["fc.weight"]
    erm.run(dataclasses.replace(config, erm=dataclasses.replace(config.erm, seed=1)))
    second = torch.load(paths.ERM / "model.pt", weights_only=True)["state_dict"]["fc.weight"]
    assert not torch.equal(first, second)
