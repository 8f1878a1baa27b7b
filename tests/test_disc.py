"""DISC (ddb/methods/disc.py) computes what its reference code computes, trains end to end,
and refuses bad params by name.

The reference transcriptions are from github.com/Wuyxin/DISC @d9865a8 (file and function
above each), written as there with the same numpy / torch / sklearn calls; `.cuda()`,
logging and caching dropped. Each is fed the same seeded inputs as ours and compared.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.svm import SVC
from torch import nn

from ddb.config import ConfigError
from ddb.methods import disc
from ddb.models.classifier import build_classifier, load_classifier, save_classifier
from ddb.stages import disc as disc_stage
from ddb.stages import evaluate
from tests.conftest import default_section, indexed, recipe, tiny_config
from tests.paper_world import write_concept_bank

# ---- transcriptions of the reference -------------------------------------------------------


def ref_get_concept_info(X_train, y_train, X_val, y_val, C):
    """disc/concept_utils/cav_utils.py get_concept_info (the stats we use)."""
    svm = SVC(C=C, kernel="linear")
    svm.fit(X_train, y_train)
    train_margin = ((np.dot(svm.coef_, X_train.T) + svm.intercept_) / np.linalg.norm(svm.coef_)).T
    margin_info = {
        "max": np.max(train_margin),
        "min": np.min(train_margin),
        "pos_mean": np.nanmean(train_margin[train_margin > 0]),
        "neg_mean": np.nanmean(train_margin[train_margin < 0]),
    }
    return svm.coef_, svm.intercept_, margin_info


def ref_get_cavs(pos_act, neg_act, n_samples, c):
    """disc/concept_utils/cav_utils.py get_cavs, on precomputed activations."""
    X_train = np.concatenate([pos_act[:n_samples], neg_act[:n_samples]], axis=0)
    X_val = np.concatenate([pos_act[n_samples:], neg_act[n_samples:]], axis=0)
    y_train = np.concatenate(
        [np.ones(pos_act[:n_samples].shape[0]), np.zeros(neg_act[:n_samples].shape[0])], axis=0
    )
    y_val = np.concatenate(
        [np.ones(pos_act[n_samples:].shape[0]), np.zeros(neg_act[n_samples:].shape[0])], axis=0
    )
    return ref_get_concept_info(X_train, y_train, X_val, y_val, c)


def ref_negatives(concept_names, concept_imgs):
    """disc/concept_utils/concept_bank.py learn_concept_bank: 'Construct negative images by
    sampling' (numpy's global RNG)."""
    for concept in concept_names:
        M = int(max(len(concept_imgs[concept]["pos"]) // len(concept_names), 0)) + 1
        for neg_concept in concept_names:
            if neg_concept == concept:
                continue
            indices = np.random.choice(len(concept_imgs[neg_concept]["pos"]), M)
            neg_samples = [concept_imgs[neg_concept]["pos"][index] for index in indices]
            concept_imgs[concept]["neg"].extend(neg_samples)
    return concept_imgs


class RefNetBottom(nn.Module):
    """disc/models.py NetBottom (the non-dense branch)."""

    def __init__(self, original_model):
        super().__init__()
        self.features = nn.Sequential(*list(original_model.children())[:-1])

    def forward(self, x):
        return torch.flatten(self.features(x), 1)


class RefNetTop(nn.Module):
    """disc/models.py NetTop."""

    def __init__(self, original_model):
        super().__init__()
        self.features = nn.Sequential(*[list(original_model.children())[-1]])

    def forward(self, x):
        return self.features(x)


def ref_get_cts(model, x, y, max_margins, concepts, n_batches, lr_arg):
    """disc/concept_utils/get_cts.py run_one_step_and_get_cts (LossComputer.loss without
    robust: the batch's mean cross-entropy)."""
    backbone, model_top = RefNetBottom(model), RefNetTop(model)
    emb = backbone(x).detach()
    outputs = model_top(emb)
    loss = nn.CrossEntropyLoss(reduction="none")(outputs, y).mean()
    gradients = torch.autograd.grad(loss, model_top.parameters(), create_graph=False)
    concept_norms = torch.norm(concepts, p=2, dim=1, keepdim=True)
    normalized_C = max_margins * concepts / concept_norms
    lr = min(10, n_batches) * lr_arg
    scores = torch.matmul(normalized_C, lr * gradients[0].T) + lr * gradients[1]
    return torch.nn.functional.softmax(-scores, dim=1).detach()


def ref_sensitivity(top_concepts_res, concept_names, c):
    """disc/run_epoch_disc.py run_epoch_disc: 'Compute concept sensitivity' for class c."""
    sensitivity = {name: [] for name in concept_names}
    for top_concepts in top_concepts_res:
        names, probs = top_concepts
        for i in range(len(names)):
            if names[i] in concept_names:
                sensitivity[names[i]].append(probs[i][c])
    concept_probs = torch.Tensor(
        [torch.std(torch.Tensor(sensitivity[name])) for name in concept_names]
    )
    return concept_probs / concept_probs.sum()


def ref_mix_up(mix_alpha, x1, x2, y1, y2, n_classes=None):
    """disc/utils/mixup.py mix_up (numpy's global RNG)."""
    length = min(len(x1), len(x2))
    x1, x2, y1, y2 = x1[:length], x2[:length], y1[:length], y2[:length]
    bsz = len(x1)
    lam = np.random.beta(mix_alpha, mix_alpha, [bsz, 1])
    l_x = np.tile(lam[..., None, None], (1, *x1.shape[1:]))
    return (
        torch.tensor(l_x, dtype=torch.float32) * x1
        + torch.tensor(1 - l_x, dtype=torch.float32) * x2
    )


def ref_conceptual_counterfactual(embedding, label, bank, model_top, W0, n_steps=100):
    """disc/concept_utils/cce_utils.py conceptual_counterfactual with its defaults (kappa
    "mean"); the one change: W starts at W0 (theirs: torch.randn), so both start alike."""
    step_size, alpha, beta, momentum = 0.1, 0.1, 1e-2, 0.9
    max_margins, min_margins = bank["max"], bank["min"]
    concepts, concept_intercepts = bank["vectors"], bank["intercepts"]
    concept_norms = torch.norm(concepts, p=2, dim=1, keepdim=True)
    emb_shape = embedding.shape
    embedding = embedding.flatten(1)
    criterion = nn.CrossEntropyLoss()
    W = nn.Parameter(W0.clone(), requires_grad=True)
    normalized_C = max_margins * concepts / concept_norms
    margins = (torch.matmul(concepts, embedding.T) + concept_intercepts) / concept_norms
    W_clamp_max = (
        max_margins * concept_norms - concept_intercepts - torch.matmul(concepts, embedding.T)
    )
    W_clamp_min = (
        min_margins * concept_norms - concept_intercepts - torch.matmul(concepts, embedding.T)
    )
    W_clamp_max = (W_clamp_max / (max_margins * concept_norms)).T
    W_clamp_min = (W_clamp_min / (max_margins * concept_norms)).T
    W_clamp_max[(margins > bank["pos_mean"]).T] = 0.0
    W_clamp_min[(margins < bank["neg_mean"]).T] = 0.0
    zeros = torch.zeros_like(W_clamp_max)
    W_clamp_max = torch.where(W_clamp_max < zeros, zeros, W_clamp_max).detach().flatten(1)
    W_clamp_min = torch.where(W_clamp_min > zeros, zeros, W_clamp_min).detach().flatten(1)
    optimizer = torch.optim.SGD([W], lr=step_size, momentum=momentum)
    for _ in range(n_steps):
        optimizer.zero_grad()
        new_embedding = embedding + torch.matmul(W, normalized_C)
        new_out = model_top(new_embedding.view(*emb_shape))
        l1_loss = torch.norm(W, dim=1, p=1) / W.shape[1]
        l2_loss = torch.norm(W, dim=1, p=2) / W.shape[1]
        loss = criterion(new_out, label) + l1_loss * alpha + l2_loss * beta
        loss.backward()
        optimizer.step()
        W_projected = torch.where(W_clamp_min > W, W_clamp_min, W).detach()
        W_projected = torch.where(W_clamp_max < W, W_clamp_max, W_projected)
        W.data = W_projected.detach()
        W.grad.zero_()
    final = model_top((embedding + torch.matmul(W, normalized_C)).view(*emb_shape))
    return W.detach(), bool(final.argmax(dim=-1) == label)


def ref_relevance_and_topk(cf_tensors, y, n_concepts, temperature=1.0, ratio=0.5):
    """disc/concept_utils/filter_concepts.py filter_relevant_concepts: the relevance of
    class y and its top-k cut."""
    try:
        sim_pos = torch.stack(cf_tensors[y]["pos"], dim=0).mean(dim=0).squeeze(0)
    except RuntimeError:
        sim_pos = torch.ones(n_concepts)
    try:
        sim_neg = torch.stack(cf_tensors[y]["neg"], dim=0).mean(dim=0).squeeze(0)
    except RuntimeError:
        sim_neg = torch.zeros(n_concepts)
    sim = torch.exp((sim_pos - sim_neg) / temperature)
    sim = sim / sim.sum()
    seq = sim.argsort(descending=True)
    prob = sim[seq]
    topk = min(torch.arange(len(prob))[torch.cumsum(prob, dim=0) > ratio][0], 20)
    return sim, seq[:topk]


def ref_environments(cluster_dict, perm, n_classes, n_clusters):
    """disc/train.py train: the environments' rows for one permutation (their `l`: k)."""
    envs = []
    for i in range(n_clusters):
        subset_idx = [
            item
            for _list in [cluster_dict[c][k] for (c, k) in zip(range(n_classes), perm[:, i])]
            for item in _list
        ]
        envs.append(subset_idx)
    return envs


# ---- ours against theirs ---------------------------------------------------------------


def features(seed: int, n: int, shift: float, dim: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)) + shift


def test_cav_and_its_margins_match_get_cavs():
    pos, neg = features(0, 20, 1.0), features(1, 20, -0.5)
    coef, intercept, margins = disc.fit_cav(pos, neg, 16, 0.1)
    ref_coef, ref_intercept, info = ref_get_cavs(pos, neg, 16, 0.1)
    np.testing.assert_allclose(coef, ref_coef[0], rtol=1e-6, atol=1e-9)
    assert intercept == pytest.approx(float(ref_intercept[0]), rel=1e-6, abs=1e-9)
    assert margins.max() == pytest.approx(info["max"], rel=1e-6)
    assert margins.min() == pytest.approx(info["min"], rel=1e-6)
    cavs = disc.learn_cavs([pos, neg, features(2, 20, 0.0)], 20, 0.1, np.random.default_rng(0))
    assert cavs.vectors.shape == (3, 6)
    # m_max v / |v|: each row's length is its max margin
    lengths = np.linalg.norm(cavs.normalized(), axis=1)
    np.testing.assert_allclose(lengths, cavs.max_margin, rtol=1e-6)


def test_negatives_are_drawn_as_learn_concept_bank_draws_them():
    counts = [7, 5, 9]
    names = ["a", "b", "c"]
    imgs = {n: {"pos": [(k, i) for i in range(counts[k])], "neg": []} for k, n in enumerate(names)}
    np.random.seed(3)
    theirs = ref_negatives(names, imgs)
    ours = disc.negative_picks(counts, np.random.RandomState(3))  # np.random.choice's stream
    assert ours == [theirs[n]["neg"] for n in names]


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.features(x))

    return Net()


def test_concept_tendency_matches_run_one_step_and_get_cts():
    model = tiny_net(0)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 2, 2, generator=gen), torch.tensor([0, 1] * 4)
    concepts = torch.randn(5, 6, generator=gen)
    max_margins = torch.rand(5, 1, generator=gen) + 0.5
    theirs = ref_get_cts(model, x, y, max_margins, concepts, n_batches=3, lr_arg=0.01)
    normalized = max_margins * concepts / concepts.norm(dim=1, keepdim=True)
    ours = disc.environment_tendency(model, x, y, normalized, lr=3 * 0.01)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours.sum(1), torch.ones(5), atol=1e-6)  # a softmax over classes


def test_sensitivity_matches_run_epoch_disc():
    gen = torch.Generator().manual_seed(0)
    names = np.array(["ocean", "forest", "redness", "grass"])
    tendencies = [torch.softmax(torch.randn(4, 2, generator=gen), 1) for _ in range(3)]
    res = [(names, [t[i] for i in range(4)]) for t in tendencies]
    kept = np.array([2, 0, 3])  # class 1's concepts, in its own order
    theirs = ref_sensitivity(res, names[kept], 1)
    ours = disc.sensitivity(tendencies, kept, 1)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)
    # the draw probabilities of images follow their concept's weight
    image_concept = np.array([0, 0, 1, 2, 2, 2])
    probs = disc.image_probabilities(image_concept, ours)
    assert probs.sum() == pytest.approx(1.0)
    assert probs[0] / probs[2] == pytest.approx(ours[0] / ours[1], rel=1e-9)


def test_mix_up_matches_theirs_with_one_lambda_per_image():
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(5, 3, 4, 4, generator=gen), torch.randn(7, 3, 4, 4, generator=gen)
    np.random.seed(0)
    theirs = ref_mix_up(2.0, x1, x2, torch.zeros(5), torch.zeros(7), n_classes=1)
    np.random.seed(0)
    ours = disc.mix_up(x1, x2, np.random.beta(2.0, 2.0, 5))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert ours.shape[0] == 5


def small_cavs() -> disc.Cavs:
    pos = [features(k, 20, float(k) - 1.0) for k in range(3)]
    return disc.learn_cavs(pos, 20, 0.1, np.random.default_rng(0))


def test_counterfactuals_match_conceptual_counterfactual_row_by_row():
    cavs = small_cavs()
    torch.manual_seed(0)
    fc = nn.Linear(6, 2)
    gen = torch.Generator().manual_seed(4)
    emb = torch.randn(4, 6, generator=gen)
    target = torch.tensor([1, 0, 1, 0])
    init = torch.randn(4, 3, generator=gen)
    ours, success = disc.counterfactual_weights(emb, target, cavs, fc, init)
    t = {
        k: torch.as_tensor(np.asarray(v), dtype=torch.float32)
        for k, v in {
            "vectors": cavs.vectors,
            "intercepts": cavs.intercepts[:, None],
            "max": cavs.max_margin[:, None],
            "min": cavs.min_margin[:, None],
            "pos_mean": cavs.pos_mean[:, None],
            "neg_mean": cavs.neg_mean[:, None],
        }.items()
    }
    for i in range(4):
        w, ok = ref_conceptual_counterfactual(
            emb[i : i + 1], target[i : i + 1], t, fc, init[i : i + 1]
        )
        torch.testing.assert_close(ours[i : i + 1], w, rtol=1e-4, atol=1e-5)
        assert bool(success[i]) == ok


def test_relevance_matches_filter_relevant_concepts_and_keeps_the_crossing_concept():
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(10, 4, generator=gen)
    toward = np.array([0, 1, 1, 0, 1, 1, 0, 1, 0, 1])
    away = np.array([1, -1, 0, -1, 0, 0, 1, -1, 1, 0])
    cf = {
        c: {
            "pos": [weights[i : i + 1] for i in np.flatnonzero(toward == c)],
            "neg": [weights[i : i + 1] for i in np.flatnonzero(away == c)],
        }
        for c in (0, 1)
    }
    probs = disc.relevance(weights.numpy(), toward, away, 2)
    for c in (0, 1):
        sim, their_top = ref_relevance_and_topk(cf, c, 4)
        np.testing.assert_allclose(probs[c], sim.numpy(), rtol=1e-5)
        ours = disc.top_concepts(probs[c])
        # theirs stops one short of the concept that crosses 50%; ours keeps it
        assert list(ours[:-1]) == their_top.tolist()
        assert probs[c][ours].sum() > 0.5 >= probs[c][ours[:-1]].sum()
    # one dominant concept: theirs keeps none, ours that one
    assert disc.top_concepts(np.array([0.7, 0.2, 0.1])).tolist() == [0]


def test_environments_take_one_cluster_of_each_class_as_train_py():
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0, 0])
    clusters = np.array([0, 1, 1, 0, 2, 2, 1, 0, 2])
    perm = np.array([[2, 0, 1], [1, 2, 0]])
    cluster_dict = {
        c: {k: np.flatnonzero((y == c) & (clusters == k)) for k in range(3)} for c in (0, 1)
    }
    theirs = ref_environments(cluster_dict, perm, 2, 3)
    ours = disc.environments(y, clusters, perm)
    assert [e.tolist() for e in ours] == [list(map(int, e)) for e in theirs]


def test_class_clusters_separate_errors_within_a_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    embedding = rng.normal(size=(80, 5))
    correct = np.tile(np.r_[np.ones(30), np.zeros(10)], 2)
    embedding[correct == 0] += 6.0  # the errors sit apart
    clusters = disc.class_clusters(embedding, correct, y, 2, "pca", 0)
    for c in (0, 1):
        rows = y == c
        # the errors form one cluster of their own
        assert len(set(clusters[rows][correct[rows] == 0])) == 1
        assert set(clusters[rows][correct[rows] == 0]).isdisjoint(
            clusters[rows][correct[rows] == 1]
        )


def test_clusters_that_cannot_be_fitted_name_the_key():
    y = np.repeat([0, 1], 4)
    # 4 images a class for 3 Gaussians, spread wide: a singleton's covariance is reg_covar
    # alone, too small beside the others to factor (sklearn: "ill-defined covariance")
    embedding = np.random.default_rng(0).normal(size=(8, 5)) * 1e6
    with pytest.raises(ConfigError, match="disc.n_clusters: 3 Gaussians on the 4 train images"):
        disc.class_clusters(embedding, np.ones(8), y, 3, "pca", 0)


def test_cure_loss_adds_one_mixed_term_per_class():
    model = tiny_net(0)
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 0, 0, 1, 1, 1])
    images = [torch.zeros(4, 3, 2, 2), torch.zeros(4, 3, 2, 2)]
    probs = [np.full(4, 0.25), np.full(4, 0.25)]
    rng = np.random.default_rng(0)
    loss = disc.cure_loss(model, x, y, images, probs, 2.0, rng)
    # by hand: the batch's CE, then each class's others mixed with zeros by the same lambdas
    rng = np.random.default_rng(0)
    ce = nn.functional.cross_entropy
    expected = ce(model(x), y)
    for c in (0, 1):
        others = y != c
        rng.choice(4, 3, p=probs[c])
        lam = torch.as_tensor(rng.beta(2.0, 2.0, 3), dtype=torch.float32).view(-1, 1, 1, 1)
        expected = expected + ce(model(lam * x[others]), y[others])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# ---- the stage end to end ----------------------------------------------------------------


def tiny_disc_config(folder, bank) -> object:
    config = tiny_config(folder)
    cfg = default_section(
        "disc",
        concept_bank=str(bank),
        n_concept_imgs=5,
        n_clusters=2,
        recipe=recipe(epochs=2, batch_size=8),
    )
    return dataclasses.replace(config, disc=cfg)


def test_the_stage_trains_and_writes_what_evaluate_reads(in_tmp_repo, waterbirds_folder):
    bank = write_concept_bank(in_tmp_repo / "bank")
    config = indexed(tiny_disc_config(waterbirds_folder, bank))
    erm = build_classifier("resnet18", 2, weights=config.classifier.weights)
    (in_tmp_repo / "models/erm").mkdir(parents=True)
    save_classifier(erm, "resnet18", 2, in_tmp_repo / "models/erm/model.pt")
    disc_stage.run(config)
    checkpoint = evaluate.trained_models(config)["disc"]
    assert checkpoint == in_tmp_repo.joinpath("models/disc/model.pt").relative_to(in_tmp_repo)
    model = load_classifier(checkpoint)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    history = pd.read_csv("models/disc/history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert history["val_wga"].between(0, 1).all()
    summary = pd.read_json("models/disc/concepts.json", typ="series")
    assert set(summary["class_concepts"]) == {"landbird", "waterbird"}
    for concepts in summary["class_concepts"].values():
        assert concepts and set(concepts) <= {"greenness", "blueness", "redness"}
    # the sampling probabilities of each class's concepts sum to 1, every epoch
    for row in summary["sensitivity"]:
        weights = [v for k, v in row.items() if k not in ("epoch", "class")]
        assert sum(weights) == pytest.approx(1.0, abs=1e-6)


# ---- params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, key",
    [
        ({"n_clusters": 1}, "disc.n_clusters"),
        ({"c_svm": 0.0}, "disc.c_svm"),
        ({"reducer": "tsne"}, "disc.reducer"),
        ({"n_concept_imgs": 2}, "disc.n_concept_imgs"),
        ({"mix_alpha": 0.0}, "disc.mix_alpha"),
        ({"concept_bank": " "}, "disc.concept_bank"),
    ],
)
def test_bad_values_name_their_key(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        default_section("disc", **change)


def test_a_bad_recipe_is_reported_under_disc_recipe():
    disc = default_section("disc", recipe=recipe(lr=-1.0))  # valid alone: lr is shared
    with pytest.raises(ValueError, match=r"disc\.recipe\.lr"):
        dataclasses.replace(tiny_config(), disc=disc)


def test_the_bank_is_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"disc\.concept_bank.*disc_concepts"):
        disc.bank_concepts(tmp_path / "missing", "everything", 5)
    bank = write_concept_bank(tmp_path / "bank")
    assert disc.bank_concepts(bank, "everything", 5) == ["blueness", "greenness", "redness"]
    assert disc.bank_concepts(bank, "color", 5) == ["blueness", "greenness", "redness"]
    with pytest.raises(ConfigError, match=r"disc\.concept_categories.*nature"):
        disc.bank_concepts(bank, "color-nature", 5)
    for image in (bank / "redness/positives").iterdir():
        image.unlink()
    with pytest.raises(ConfigError, match=r"disc\.concept_bank.*redness"):
        disc.bank_concepts(bank, "everything", 5)
