"""GroupDRO, JTT and DFR compute what their reference code computes.

Each test transcribes the decisive part of the reference implementation (repository, file
and function cited above it, written as there, with the same numpy / torch / sklearn calls;
`.cuda()` dropped), feeds it and ours the same seeded inputs, and compares. No image is read.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.utils.data import ConcatDataset, DataLoader, Subset, WeightedRandomSampler

from ddb.data.dataset import WATERBIRDS_GROUPS
from ddb.methods import dfr, group_dro, jtt
from ddb.training import Speed, train_loader
from tests.conftest import default_section, tiny_config

GROUP_SIZES = [60, 7, 4, 29]  # a skewed train split, as Waterbirds'


def skewed_table(sizes=GROUP_SIZES) -> pd.DataFrame:
    """A train split (split 0) of the given group sizes, groups 2y + place, shuffled."""
    groups = np.random.default_rng(0).permutation(np.repeat(np.arange(len(sizes)), sizes))
    return pd.DataFrame({"split": 0, "y": groups // 2, "place": groups % 2, "group": groups})


def captured_fit_kwargs(monkeypatch, module, config, table) -> list[dict]:
    """The keyword arguments `module.train` gives fit_classifier (which is not run)."""
    calls = []

    def fake_fit(*args, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(model=None)

    monkeypatch.setattr(module, "fit_classifier", fake_fit)
    module.train(config, "unused-root", table, WATERBIRDS_GROUPS)
    return calls


def epoch_draws(loader) -> list[int]:
    """The row indices one epoch of `loader` draws, without loading any image."""
    return [i for batch in loader.batch_sampler for i in batch]


# ---- GroupDRO: kohpangwei/group_DRO ------------------------------------------------------


def reference_reweight_sampler(group_array: torch.Tensor, n_groups: int):
    # group_DRO data/dro_dataset.py, DRODataset.__init__ and get_loader(train=True,
    # reweight_groups=True)
    _group_counts = (torch.arange(n_groups).unsqueeze(1) == group_array).sum(1).float()
    group_weights = len(group_array) / _group_counts
    weights = group_weights[group_array]
    return WeightedRandomSampler(weights, len(group_array), replacement=True)


def test_group_dro_samples_batches_as_reweight_groups(monkeypatch):
    config = tiny_config()
    table = skewed_table()
    (kwargs,) = captured_fit_kwargs(monkeypatch, group_dro, config, table)
    group = np.array(table["group"])
    theirs = reference_reweight_sampler(torch.as_tensor(group), 4)
    ours = train_loader(table, config.classifier, 0, Speed(), kwargs["sample_weights"])
    sampler = ours.batch_sampler.batches.sampler
    assert (sampler.num_samples, sampler.replacement) == (theirs.num_samples, True)
    assert sampler.weights / sampler.weights.sum() == pytest.approx(
        (theirs.weights / theirs.weights.sum()).double().numpy(), rel=1e-6
    )
    # over many epochs every group gets a quarter of the draws, as theirs (a uniform
    # sampler would give the first group 60%)
    draws = np.concatenate([epoch_draws(ours) for _ in range(200)])
    shares = np.bincount(group[draws], minlength=4) / len(draws)
    torch.manual_seed(0)
    their_draws = np.concatenate([list(theirs) for _ in range(200)])
    their_shares = np.bincount(group[their_draws], minlength=4) / len(their_draws)
    assert len(draws) == 200 * len(table)
    assert shares == pytest.approx([0.25] * 4, abs=0.01)
    assert shares == pytest.approx(their_shares, abs=0.015)


def test_group_dro_uniform_batches_without_reweight_groups(monkeypatch):
    config = tiny_config()
    off = dataclasses.replace(config.baselines.group_dro, reweight_groups=False)
    config = dataclasses.replace(
        config, baselines=dataclasses.replace(config.baselines, group_dro=off)
    )
    (kwargs,) = captured_fit_kwargs(monkeypatch, group_dro, config, skewed_table())
    assert kwargs["sample_weights"] is None


class ReferenceLossComputer:
    # group_DRO loss.py, LossComputer (is_robust=True, btl=False, normalize_loss=False):
    # __init__, compute_group_avg and compute_robust_loss as there
    def __init__(self, group_counts, adj, step_size=0.01, normalize_loss=False):
        self.n_groups = len(group_counts)
        self.group_counts = group_counts
        self.adj = adj
        self.step_size = step_size
        self.normalize_loss = normalize_loss
        self.adv_probs = torch.ones(self.n_groups) / self.n_groups

    def compute_robust_loss(self, group_loss, group_count):
        adjusted_loss = group_loss
        if torch.all(self.adj > 0):
            adjusted_loss += self.adj / torch.sqrt(self.group_counts)
        if self.normalize_loss:
            adjusted_loss = adjusted_loss / (adjusted_loss.sum())
        self.adv_probs = self.adv_probs * torch.exp(self.step_size * adjusted_loss.data)
        self.adv_probs = self.adv_probs / (self.adv_probs.sum())

        robust_loss = group_loss @ self.adv_probs
        return robust_loss, self.adv_probs

    def compute_group_avg(self, losses, group_idx):
        group_map = (group_idx == torch.arange(self.n_groups).unsqueeze(1).long()).float()
        group_count = group_map.sum(1)
        group_denom = group_count + (group_count == 0).float()  # avoid nans
        group_loss = (group_map @ losses.view(-1)) / group_denom
        return group_loss, group_count


@pytest.mark.parametrize("adjustment", [0.0, 2.0])
def test_group_dro_loss_and_q_match_loss_computer(adjustment):
    sizes = np.array(GROUP_SIZES)
    step_size = 1.0  # large, so that a few steps move q far from uniform
    ours = group_dro.GroupDROLoss(sizes, step_size, adjustment)
    theirs = ReferenceLossComputer(
        torch.as_tensor(sizes).float(),
        torch.from_numpy(np.array([adjustment] * 4)).float(),  # train.py: one value, per group
        step_size=step_size,
    )
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        group = torch.randint(0, 4, (16,), generator=gen)
        if step % 2:
            group[group == 2] = 1  # a batch without group 2
        losses = torch.rand(16, generator=gen) * (1 + group)  # group 3 the worst
        ours_in = losses.clone().requires_grad_()
        their_in = losses.clone().requires_grad_()
        our_loss = ours(ours_in, group)
        group_loss, group_count = theirs.compute_group_avg(their_in, group)
        their_loss, _ = theirs.compute_robust_loss(group_loss, group_count)
        our_loss.backward()
        their_loss.backward()
        assert ours.q.numpy() == pytest.approx(theirs.adv_probs.numpy(), abs=1e-6)
        assert our_loss.item() == pytest.approx(their_loss.item(), abs=1e-5)
        assert ours_in.grad.numpy() == pytest.approx(their_in.grad.numpy(), abs=1e-6)
    assert ours.q[3] > 0.5  # far from uniform: the comparison means something


# ---- JTT: anniesch/jtt ---------------------------------------------------------------------


class Rows(torch.utils.data.Dataset):
    """A train set whose sample is its row index."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def reference_upsampled_rows(errors: np.ndarray, up_weight: int) -> list[int]:
    # jtt run_expt.py, main(): the up_weight branch (aug_col "wrong_1_times"), with
    # torch's Subset / ConcatDataset for those of data/folds.py (same indexing)
    train_data = Rows(len(errors))
    train_col = pd.DataFrame({"wrong_1_times": errors.astype(int)})
    aug_indices = np.where(train_col["wrong_1_times"] == 1)[0]
    up_weight_factor = up_weight
    upsampled_points = Subset(train_data, list(aug_indices) * up_weight_factor)
    train_data = ConcatDataset([train_data, upsampled_points])
    # its loader: DataLoader(train_data, shuffle=True): each position once an epoch
    return [int(train_data[i]) for i in range(len(train_data))]


@pytest.mark.parametrize("upweight", [1, 5, 100])
def test_jtt_epoch_is_the_reference_upsampled_set(upweight):
    errors = np.random.default_rng(upweight).random(50) < 0.2
    reference = reference_upsampled_rows(errors, upweight)
    ours = jtt.upsampled_indices(errors, upweight)
    assert ours.tolist() == reference
    cfg = dataclasses.replace(tiny_config().classifier, batch_size=8)
    loader = train_loader(Rows(len(errors)), cfg, 0, Speed(), sample_indices=ours)
    n_draws = len(errors) + upweight * errors.sum()
    first, second = epoch_draws(loader), epoch_draws(loader)
    for draws in (first, second):  # each epoch: N + lambda |E| draws without replacement
        assert len(draws) == n_draws
        assert Counter(draws) == Counter(reference)
        counts = np.bincount(draws, minlength=len(errors))
        assert set(counts[errors]) == {1 + upweight} and set(counts[~errors]) == {1}
    assert first != second  # reshuffled every epoch
    # their shuffled loader over the same dataset draws the same multiset
    their_loader = DataLoader(
        ConcatDataset([Rows(len(errors)), Subset(Rows(len(errors)), reference[len(errors) :])]),
        batch_size=8,
        shuffle=True,
    )
    assert Counter(int(i) for batch in their_loader for i in batch) == Counter(first)


def test_jtt_trains_its_second_model_on_the_upsampled_set(monkeypatch):
    config = tiny_config()
    errors = np.zeros(len(skewed_table()), bool)
    errors[[3, 17, 40]] = True
    monkeypatch.setattr(jtt, "error_set", lambda *args: errors)
    identify, second = captured_fit_kwargs(monkeypatch, jtt, config, skewed_table())
    assert identify == {"select_best": False} and set(second) == {"sample_indices"}
    reference = reference_upsampled_rows(errors, config.baselines.jtt.upweight)
    assert second["sample_indices"].tolist() == reference


# ---- DFR: PolinaKirichenko/deep_feature_reweighting ------------------------------------------

C_OPTIONS = [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]  # dfr_evaluate_spurious.py (Waterbirds)
REG = "l1"


def reference_logistic_regression(penalty, C, solver, class_weight):
    # sklearn 1.8 deprecated penalty="l1" for l1_ratio=1 (the same model); the reference
    # passes no random_state (liblinear's seed comes from numpy's global state)
    assert penalty == "l1"
    return LogisticRegression(l1_ratio=1.0, C=C, solver=solver, class_weight=class_weight)


def dfr_on_validation_tune(
    all_embeddings, all_y, all_g, preprocess=True, balance_val=False, add_train=True, num_retrains=1
):
    # dfr_evaluate_spurious.py, dfr_on_validation_tune, as there; returns worst_accs too
    worst_accs = {}
    for i in range(num_retrains):
        x_val = all_embeddings["val"]
        y_val = all_y["val"]
        g_val = all_g["val"]
        n_groups = np.max(g_val) + 1

        n_val = len(x_val) // 2
        idx = np.arange(len(x_val))
        np.random.shuffle(idx)

        x_valtrain = x_val[idx[n_val:]]
        y_valtrain = y_val[idx[n_val:]]
        g_valtrain = g_val[idx[n_val:]]

        n_groups = np.max(g_valtrain) + 1
        g_idx = [np.where(g_valtrain == g)[0] for g in range(n_groups)]
        min_g = np.min([len(g) for g in g_idx])
        for g in g_idx:
            np.random.shuffle(g)
        if balance_val:
            x_valtrain = np.concatenate([x_valtrain[g[:min_g]] for g in g_idx])
            y_valtrain = np.concatenate([y_valtrain[g[:min_g]] for g in g_idx])
            g_valtrain = np.concatenate([g_valtrain[g[:min_g]] for g in g_idx])

        x_val = x_val[idx[:n_val]]
        y_val = y_val[idx[:n_val]]
        g_val = g_val[idx[:n_val]]

        n_train = len(x_valtrain) if add_train else 0

        x_train = np.concatenate([all_embeddings["train"][:n_train], x_valtrain])
        y_train = np.concatenate([all_y["train"][:n_train], y_valtrain])
        if preprocess:
            scaler = StandardScaler()
            x_train = scaler.fit_transform(x_train)
            x_val = scaler.transform(x_val)

        cls_w_options = [{0: 1.0, 1: 1.0}]  # balance_val and not add_train
        for c in C_OPTIONS:
            for class_weight in cls_w_options:
                logreg = reference_logistic_regression(
                    penalty=REG, C=c, solver="liblinear", class_weight=class_weight
                )
                logreg.fit(x_train, y_train)
                preds_val = logreg.predict(x_val)
                group_accs = np.array(
                    [(preds_val == y_val)[g_val == g].mean() for g in range(n_groups)]
                )
                worst_acc = np.min(group_accs)
                if i == 0:
                    worst_accs[c, class_weight[0], class_weight[1]] = worst_acc
                else:
                    worst_accs[c, class_weight[0], class_weight[1]] += worst_acc
    ks, vs = list(worst_accs.keys()), list(worst_accs.values())
    best_hypers = ks[np.argmax(vs)]
    return best_hypers, worst_accs


def dfr_on_validation_eval(
    c, w1, w2, all_embeddings, all_y, all_g, num_retrains=20, preprocess=True,
    balance_val=False, add_train=True,
):  # fmt: skip
    # dfr_evaluate_spurious.py, dfr_on_validation_eval, as there up to the averaged head it
    # installs (logreg.coef_ = np.mean(coefs, axis=0), likewise the intercept), and its scaler
    coefs, intercepts = [], []
    if preprocess:
        scaler = StandardScaler()
        scaler.fit(all_embeddings["train"])

    for i in range(num_retrains):  # noqa: B007 (as there)
        x_val = all_embeddings["val"]
        y_val = all_y["val"]
        g_val = all_g["val"]
        n_groups = np.max(g_val) + 1
        g_idx = [np.where(g_val == g)[0] for g in range(n_groups)]
        min_g = np.min([len(g) for g in g_idx])
        for g in g_idx:
            np.random.shuffle(g)
        if balance_val:
            x_val = np.concatenate([x_val[g[:min_g]] for g in g_idx])
            y_val = np.concatenate([y_val[g[:min_g]] for g in g_idx])

        n_train = len(x_val) if add_train else 0
        train_idx = np.arange(len(all_embeddings["train"]))
        np.random.shuffle(train_idx)
        train_idx = train_idx[:n_train]

        x_train = np.concatenate([all_embeddings["train"][train_idx], x_val])
        y_train = np.concatenate([all_y["train"][train_idx], y_val])
        if preprocess:
            x_train = scaler.transform(x_train)

        logreg = reference_logistic_regression(
            penalty=REG, C=c, solver="liblinear", class_weight={0: w1, 1: w2}
        )
        logreg.fit(x_train, y_train)
        coefs.append(logreg.coef_)
        intercepts.append(logreg.intercept_)
    return np.mean(coefs, axis=0), np.mean(intercepts, axis=0), scaler


def spurious_features(sizes, rng, shift=0.0):
    """Features of groups 2y + place: a noisy core feature (y), a cleaner spurious one
    (place), noise; `shift` moves every feature (train vs val statistics)."""
    groups = np.repeat(np.arange(4), sizes)
    y, place = groups // 2, groups % 2
    n = len(groups)
    x = np.column_stack(
        [
            y + 0.6 * rng.normal(size=n),
            place + 0.2 * rng.normal(size=n),
            rng.normal(size=(n, 6)),
        ]
    )
    return x * 1.5 + shift, y, groups


class ReplayedShuffles:
    """An rng for ours that returns, in order, the permutations the reference's
    np.random.shuffle calls produced, checking each permutes what ours permutes."""

    def __init__(self, shuffles: list[np.ndarray]):
        self.shuffles = list(shuffles)

    def permutation(self, x):
        x = np.arange(x) if np.isscalar(x) else np.asarray(x)
        drawn = self.shuffles.pop(0)
        assert np.array_equal(np.sort(drawn), np.sort(x)), "ours draws in another order"
        return drawn


def test_dfr_head_is_the_reference_tuned_and_averaged_head(monkeypatch):
    rng = np.random.default_rng(0)
    x_train, y_train, g_train = spurious_features([300, 20, 15, 280], rng, shift=0.7)
    x_val, y_val, g_val = spurious_features([40, 25, 22, 37], rng)
    embeddings = {"train": x_train, "val": x_val}
    all_y, all_g = {"train": y_train, "val": y_val}, {"train": g_train, "val": g_val}

    shuffles = []
    real_shuffle = np.random.shuffle

    def recording_shuffle(a):
        real_shuffle(a)
        shuffles.append(a.copy())

    monkeypatch.setattr(np.random, "shuffle", recording_shuffle)
    np.random.seed(0)
    # the script's call: balance_dfr_val and notrain_dfr_val default to True
    (their_c, w1, w2), worst_accs = dfr_on_validation_tune(
        embeddings, all_y, all_g, balance_val=True, add_train=False
    )
    coef, intercept, scaler = dfr_on_validation_eval(
        their_c, w1, w2, embeddings, all_y, all_g, balance_val=True, add_train=False
    )
    monkeypatch.setattr(np.random, "shuffle", real_shuffle)
    # with no train rows added, each retrain's shuffle of the train indices is unused
    shuffles = [s for s in shuffles if len(s) != len(x_train)]

    cfg = default_section("dfr", C=C_OPTIONS, num_retrains=20, tune_split="random", seed=0)
    head = dfr.fit_head(x_val, y_val, g_val, x_train, cfg, ReplayedShuffles(shuffles))
    assert [h["held_out_wga"] for h in head.history] == pytest.approx(
        list(worst_accs.values()), abs=1e-12
    )
    assert their_c == head.C  # the same C chosen
    assert head.mean == pytest.approx(scaler.mean_, rel=1e-12)  # the train split's
    assert head.std == pytest.approx(scaler.scale_, rel=1e-12)
    # liblinear's own seed differs (theirs: numpy's global state): within its tolerance
    assert head.coef == pytest.approx(coef, abs=2e-3)
    assert head.intercept == pytest.approx(intercept, abs=2e-3)
    assert np.abs(coef).max() > 0.5  # a real head, not all zeros


def test_dfr_scaler_is_not_the_val_subsets():
    # fit on the train split's statistics: a val-fitted scaler would differ by the shift
    rng = np.random.default_rng(1)
    x_train, _, _ = spurious_features([100, 10, 10, 100], rng, shift=2.0)
    x_val, y_val, g_val = spurious_features([20, 20, 20, 20], rng)
    cfg = default_section("dfr", num_retrains=3)
    head = dfr.fit_head(x_val, y_val, g_val, x_train, cfg, np.random.default_rng(0))
    assert head.mean == pytest.approx(x_train.mean(0), rel=1e-9)
    assert head.std == pytest.approx(x_train.std(0), rel=1e-9)
    assert np.abs(head.mean - x_val.mean(0)).min() > 1.0
