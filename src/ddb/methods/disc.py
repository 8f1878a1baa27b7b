"""DISC, Discover and Cure (Wu, Yuksekgonul, Zhang, Zou, ICML 2023), as its code runs it
(github.com/Wuyxin/DISC @d9865a8, `scripts/waterbirds.sh`, `scripts/metashifts.sh`).

A fresh classifier (from the same start as ERM) trains with mixup against the concepts the
current model is sensitive to; the ERM model only chooses concepts and environments:

1. Filter (`concept_utils/filter_concepts.py` filter_relevant_concepts, `cce_utils.py`
   conceptual_counterfactual): CAVs on ERM features; for each train image a conceptual
   counterfactual (100 SGD steps on concept weights W, lr 0.1, momentum 0.9, L1 0.1,
   L2 0.01, W kept within the concepts' margins): a correct prediction is pushed to each
   other class, an error to its true class. Per class, softmax(mean W of the counterfactuals
   toward it - mean W of those away from it); the top concepts to 50% of that mass (at most
   20) are the class's concepts.
2. Environments (`utils/cluster.py` cluter_assignment): per class, [ERM embedding, correct
   0/1] reduced to 2-D and clustered by a GMM into `disc.n_clusters`; every 2 epochs the
   clusters are permuted per class and environment i is one cluster of each class (`train.py`).
3. Discover, every epoch on the current model (`run_epoch_disc.py`, `concept_bank.py`
   learn_concept_bank, `cav_utils.py` get_cavs, `get_cts.py` run_one_step_and_get_cts):
   a linear SVM (C `disc.c_svm`) per concept on penultimate features, negatives drawn from
   the other concepts, the first 80% of `n_concept_imgs` to fit; per environment, one batch:
   the gradient of CE w.r.t. the last layer, score[k, c] = lr'(m_max v_k/|v_k|).dW_c +
   lr'.db_c with lr' = min(10, batches in the environment) x lr; softmax(-score) over classes.
   A concept's sensitivity for class c = the std of that softmax over environments,
   normalised over the class's concepts: the probabilities its images are drawn with.
4. Cure: loss = CE(batch) + sum over classes c of CE(mixup of the batch's images with
   y != c and class-c concept images, lambda ~ Beta(`mix_alpha`) per image, label = y).
   The checkpoint with the best val WGA is kept.

Group labels: none in training by default; `disc.reweight_groups` (their Waterbirds script's
`--reweight_groups`) draws group-balanced batches from the train groups. Val groups choose
the checkpoint.

Departures from that code, and why:
- Environments reduce to 2-D with PCA by default (`disc.reducer: umap` is theirs, UMAP with
  n_neighbors 10, min_dist 0, when umap-learn is installed: it is not a dependency here).
- The filter runs the counterfactuals of every train image, batched, instead of stopping
  after 300 s of wall time (a rule whose result depends on the machine).
- The filter keeps the concept whose mass crosses 50% (theirs stops one short:
  `names[:i]`, i the first index past 50%, keeps no concept when one holds half the mass,
  and the empty concept set then breaks training).
- The cure trains in train mode. Theirs calls learn_concept_bank, which sets model.eval(),
  after model.train(), so its cure steps run with BatchNorm frozen, a side effect its paper
  does not describe.
- Concept images take the eval transform once (theirs: the train transform, once, cached).
- Every draw comes from `disc.seed` (theirs: numpy's and torch's global state).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.svm import SVC
from torch import nn
from torch.nn import functional as F

from ddb.config import ConfigError, DiscConfig, with_recipe
from ddb.data.dataset import ImageTable, load_image, split_table
from ddb.methods.group_balanced import group_balanced_weights
from ddb.models.classifier import build_classifier, eval_transform, train_transform
from ddb.training import (
    Speed,
    TrainResult,
    evaluate_split,
    make_optimizer,
    resolve_device,
    train_loader,
)
from ddb.utils import seed_everything

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
FIT_SHARE = 0.8  # of n_concept_imgs: the CAV's training images (learn_concept_bank)
FILTER_MASS, FILTER_MAX = 0.5, 20  # filter_relevant_concepts: ratio, and its cap of 20
CTS_MAX_BATCHES = 10  # get_cts: lr' = min(10, len(loader)) * lr


# ---- the concept bank on disk (DISC's layout) ----------------------------------------------


def concept_images(bank: Path, name: str, limit: int) -> list[Path]:
    """The first `limit` images of `<bank>/<name>/positives/`, by file name (theirs:
    os.listdir's order, which is the file system's)."""
    folder = bank / name / "positives"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]


def bank_concepts(bank: Path, categories: str, limit: int) -> list[str]:
    """The concepts `disc.concept_categories` names (learn_concept_bank: "everything", every
    folder; else the metadata.json lists of the '-'-joined categories), each checked to have
    at least two images; raises ConfigError naming the key and what to do."""
    key = "params.yaml: 'disc.concept_bank'"
    if not bank.is_dir():
        raise ConfigError(
            f"{key} is {str(bank)!r}: no such folder. Build the embedded default's with "
            "`dvc repro disc_concepts`, or point the key at a bank in DISC's layout "
            "(<concept>/positives/*.png, with metadata.json; DISC's concept_bank/download.py)"
        )
    if categories == "everything":
        names = sorted(p.name for p in bank.iterdir() if (p / "positives").is_dir())
    else:
        metadata_path = bank / "metadata.json"
        if not metadata_path.is_file():
            raise ConfigError(
                f"params.yaml: 'disc.concept_categories' is {categories!r} but {metadata_path} "
                "is missing: add it ({category: [concepts]}) or set the key to everything"
            )
        metadata = json.loads(metadata_path.read_text())
        unknown = [c for c in categories.split("-") if c not in metadata]
        if unknown:
            raise ConfigError(
                f"params.yaml: 'disc.concept_categories' names {unknown}, not in "
                f"{metadata_path} (known: {', '.join(metadata)})"
            )
        names = sorted({n for c in categories.split("-") for n in metadata[c]})
    short = [
        n
        for n in names
        if not (bank / n / "positives").is_dir() or len(concept_images(bank, n, limit)) < 2
    ]
    if short or len(names) < 2:
        raise ConfigError(
            f"{key} ({bank}): needs at least 2 concepts, each with 2 or more images in "
            f"<concept>/positives/; {len(names)} concepts, without enough images: {short[:10]}"
        )
    return names


def load_concept_tensors(bank: Path, names: list[str], limit: int, size: int) -> list[torch.Tensor]:
    transform = eval_transform(size)
    return [
        torch.stack([transform(load_image(p)) for p in concept_images(bank, n, limit)])
        for n in names
    ]


# ---- CAVs (learn_concept_bank, get_cavs, get_concept_info) ---------------------------------


@dataclass
class Cavs:
    """One linear SVM per concept on penultimate features, and its train margins."""

    vectors: np.ndarray  # concepts x features: the SVMs' coef_
    intercepts: np.ndarray  # concepts
    max_margin: np.ndarray  # concepts: margin stats of the SVM's training features
    min_margin: np.ndarray
    pos_mean: np.ndarray
    neg_mean: np.ndarray

    def normalized(self) -> np.ndarray:
        """m_max v_k / |v_k| (ConceptBank.normalized_concepts)."""
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.max_margin[:, None] * self.vectors / norms


def negative_picks(counts: list[int], rng) -> list[list[tuple[int, int]]]:
    """Per concept, its negatives as (concept, image) pairs: M = n_k // K + 1 images drawn
    with replacement from each other concept, in concept order (learn_concept_bank;
    `rng.choice(n, M)`, numpy's np.random.choice in theirs)."""
    picks = []
    for k, n_k in enumerate(counts):
        m = n_k // len(counts) + 1
        picks.append(
            [(j, int(i)) for j in range(len(counts)) if j != k for i in rng.choice(counts[j], m)]
        )
    return picks


def fit_cav(pos: np.ndarray, neg: np.ndarray, n_train: int, c: float) -> tuple:
    """Linear SVM of the first n_train positives against the first n_train negatives:
    (coef, intercept, margins of its training features) as get_cavs / get_concept_info."""
    x = np.concatenate([pos[:n_train], neg[:n_train]])
    y = np.concatenate([np.ones(len(pos[:n_train])), np.zeros(len(neg[:n_train]))])
    svm = SVC(C=c, kernel="linear").fit(x, y)
    margins = (x @ svm.coef_[0] + svm.intercept_[0]) / np.linalg.norm(svm.coef_)
    return svm.coef_[0], float(svm.intercept_[0]), margins


def learn_cavs(features: list[np.ndarray], n_concept_imgs: int, c: float, rng) -> Cavs:
    """The CAV of each concept (features[k]: its images' penultimate features)."""
    n_train = int(FIT_SHARE * n_concept_imgs)
    picks = negative_picks([len(f) for f in features], rng)
    rows = [
        fit_cav(pos, np.stack([features[j][i] for j, i in negs]), n_train, c)
        for pos, negs in zip(features, picks)
    ]
    margins = [m for _, _, m in rows]
    return Cavs(
        vectors=np.stack([coef for coef, _, _ in rows]),
        intercepts=np.array([b for _, b, _ in rows]),
        max_margin=np.array([m.max() for m in margins]),
        min_margin=np.array([m.min() for m in margins]),
        pos_mean=np.array([np.nanmean(m[m > 0]) if (m > 0).any() else np.nan for m in margins]),
        neg_mean=np.array([np.nanmean(m[m < 0]) if (m < 0).any() else np.nan for m in margins]),
    )


# ---- filter: conceptual counterfactuals (cce_utils, filter_concepts) ----------------------


def counterfactual_weights(
    embedding: torch.Tensor,
    target: torch.Tensor,
    cavs: Cavs,
    fc: nn.Linear,
    init: torch.Tensor,
    steps: int = 100,
    lr: float = 0.1,
    momentum: float = 0.9,
    l1: float = 0.1,
    l2: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """conceptual_counterfactual (kappa "mean", validity enforced) for each row at once:
    rows are independent (their losses are summed, so each row's gradient is its own).
    `init`: the starting W, rows x concepts (theirs: torch.randn(1, K)). Returns (W, success)."""
    vectors = torch.as_tensor(cavs.vectors, dtype=torch.float32)
    norms = vectors.norm(dim=1)
    intercepts = torch.as_tensor(cavs.intercepts, dtype=torch.float32)
    max_m = torch.as_tensor(cavs.max_margin, dtype=torch.float32)
    normalized = torch.as_tensor(cavs.normalized(), dtype=torch.float32)
    projection = embedding @ vectors.T  # rows x concepts
    margins = (projection + intercepts) / norms
    w_max = (max_m * norms - intercepts - projection) / (max_m * norms)
    w_min = (
        torch.as_tensor(cavs.min_margin, dtype=torch.float32) * norms - intercepts - projection
    ) / (max_m * norms)
    # a concept already past its positive (negative) mean margin may not grow (shrink)
    w_max[margins > torch.as_tensor(cavs.pos_mean, dtype=torch.float32)] = 0.0
    w_min[margins < torch.as_tensor(cavs.neg_mean, dtype=torch.float32)] = 0.0
    w_max, w_min = w_max.clamp(min=0), w_min.clamp(max=0)
    n_concepts = vectors.shape[0]
    W = init.clone().requires_grad_()
    optimizer = torch.optim.SGD([W], lr=lr, momentum=momentum)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = fc(embedding + W @ normalized)
        loss = F.cross_entropy(logits, target, reduction="sum")
        loss = loss + (l1 * W.norm(p=1, dim=1) + l2 * W.norm(p=2, dim=1)).sum() / n_concepts
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            W.copy_(torch.maximum(torch.minimum(W, w_max), w_min))
    with torch.no_grad():
        success = fc(embedding + W @ normalized).argmax(1) == target
    return W.detach(), success


def counterfactual_rows(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(image, target class, toward class, away class or -1) per counterfactual: a correct
    prediction is pushed to every other class (toward it, away from y), an error to y."""
    rows = []
    for i, (label, p) in enumerate(zip(y, pred)):
        if p == label:
            rows += [(i, c, c, label) for c in range(n_classes) if c != label]
        else:
            rows.append((i, label, label, -1))
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def relevance(
    weights: np.ndarray, toward: np.ndarray, away: np.ndarray, n_classes: int
) -> np.ndarray:
    """classes x concepts: softmax(mean W toward c - mean W away from c) over the successful
    counterfactuals (a missing side counts as ones / zeros, as theirs)."""
    n_concepts = weights.shape[1]
    out = []
    for c in range(n_classes):
        pos = weights[toward == c].mean(0) if (toward == c).any() else np.ones(n_concepts)
        neg = weights[away == c].mean(0) if (away == c).any() else np.zeros(n_concepts)
        sim = np.exp(pos - neg)
        out.append(sim / sim.sum())
    return np.stack(out)


def top_concepts(probs: np.ndarray) -> np.ndarray:
    """Concept indices by falling relevance, up to the one whose mass crosses 50%, at most
    20 (see the module doc for the one-off in theirs)."""
    order = np.argsort(-probs, kind="stable")
    crossing = int(np.argmax(np.cumsum(probs[order]) > FILTER_MASS))
    return order[: min(crossing + 1, FILTER_MAX)]


def filter_concepts(
    embedding: torch.Tensor, y: np.ndarray, fc: nn.Linear, cavs: Cavs, generator: torch.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per class, the indices of its relevant concepts; and the classes x concepts relevance."""
    n_classes = fc.out_features
    with torch.no_grad():
        pred = fc(embedding).argmax(1).numpy()
    rows = counterfactual_rows(y, pred, n_classes)
    weights, success = [], []
    for start in range(0, len(rows), 4096):  # bounded memory on large train sets
        part = rows[start : start + 4096]
        init = torch.randn(len(part), len(cavs.vectors), generator=generator)
        w, ok = counterfactual_weights(
            embedding[part[:, 0]], torch.as_tensor(part[:, 1]), cavs, fc, init
        )
        weights.append(w.numpy())
        success.append(ok.numpy())
    ok = np.concatenate(success)
    w = np.concatenate(weights)[ok]
    probs = relevance(w, rows[ok, 2], rows[ok, 3], n_classes)
    log.info("disc: %d of %d counterfactuals flipped the prediction", ok.sum(), len(ok))
    return [top_concepts(p) for p in probs], probs


# ---- environments (cluster.py, train.py) ---------------------------------------------------


def reduce_2d(x: np.ndarray, reducer: str, seed: int) -> np.ndarray:
    if reducer == "umap":
        try:
            from umap import UMAP
        except ImportError:
            raise ConfigError(
                "params.yaml: 'disc.reducer' is umap but umap-learn is not installed: "
                "`pip install umap-learn`, or use pca"
            ) from None
        return UMAP(n_components=2, n_neighbors=10, min_dist=0.0, random_state=seed).fit_transform(
            x
        )
    return PCA(n_components=2, random_state=seed).fit_transform(x)


def class_clusters(
    embedding: np.ndarray,
    correct: np.ndarray,
    y: np.ndarray,
    n_clusters: int,
    reducer: str,
    seed: int,
) -> np.ndarray:
    """Each train image's cluster within its class: GMM(n_clusters) on the 2-D reduction
    of [ERM embedding, correct 0/1] of that class's images."""
    clusters = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        rows = y == c
        reps = reduce_2d(np.concatenate([embedding[rows], correct[rows, None]], 1), reducer, seed)
        try:
            gmm = GaussianMixture(n_components=n_clusters, random_state=seed).fit(reps)
        except ValueError as err:  # a Gaussian left with one point, or points that coincide
            raise ConfigError(
                f"disc.n_clusters: {n_clusters} Gaussians on the {int(rows.sum())} train images "
                f"of class {c} could not be fitted ({err}); lower disc.n_clusters or add images"
            ) from err
        clusters[rows] = gmm.predict(reps)
    return clusters


def environments(y: np.ndarray, clusters: np.ndarray, perm: np.ndarray) -> list[np.ndarray]:
    """Environment i: the rows of cluster perm[c, i] of each class c (perm: classes x
    clusters, one permutation a row), in class order as theirs concatenates them."""
    return [
        np.concatenate(
            [np.flatnonzero((y == c) & (clusters == perm[c, i])) for c in range(len(perm))]
        )
        for i in range(perm.shape[1])
    ]


# ---- discover: concept sensitivity (get_cts, run_epoch_disc) -------------------------------


def concept_tendency(
    normalized: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor, lr: float
) -> torch.Tensor:
    """concepts x classes: softmax over classes of -(lr (m_max v_k/|v_k|) . dW_c + lr db_c)."""
    scores = normalized @ (lr * grad_w).T + lr * grad_b
    return torch.softmax(-scores, dim=1)


def sensitivity(tendencies: list[torch.Tensor], concepts: np.ndarray, c: int) -> np.ndarray:
    """Sampling probabilities of class c's concepts: each concept's std over environments
    (torch.std, unbiased, as theirs) of its class-c tendency, normalised to sum 1; uniform
    when every std is 0 (theirs would divide by 0)."""
    stds = torch.stack([t[concepts, c] for t in tendencies]).std(0).numpy().astype(np.float64)
    total = stds.sum()
    return stds / total if total > 0 else np.full(len(stds), 1 / len(stds))


def environment_tendency(
    model: nn.Module, images: torch.Tensor, y: torch.Tensor, normalized: torch.Tensor, lr: float
) -> torch.Tensor:
    """concept_tendency of one environment batch: CE's gradient w.r.t. the last layer, the
    body detached (run_one_step_and_get_cts)."""
    with torch.no_grad():
        features = body(model)(images)
    loss = F.cross_entropy(model.fc(features), y)
    grad_w, grad_b = torch.autograd.grad(loss, [model.fc.weight, model.fc.bias])
    return concept_tendency(normalized, grad_w, grad_b, lr).detach().cpu()


# ---- cure (run_epoch_disc, mixup.py mix_up) ------------------------------------------------


def mix_up(x1: torch.Tensor, x2: torch.Tensor, lam: np.ndarray) -> torch.Tensor:
    """lam x1 + (1 - lam) x2 per image, on the first min(len) of each (mix_up)."""
    n = min(len(x1), len(x2))
    weight = torch.as_tensor(lam[:n], dtype=torch.float32, device=x1.device).view(-1, 1, 1, 1)
    return weight * x1[:n] + (1 - weight) * x2[:n]


def image_probabilities(concept_of_image: np.ndarray, concept_probs: np.ndarray) -> np.ndarray:
    """Each concept image's draw probability: its concept's (ConceptDataset.get_loader's
    WeightedRandomSampler weights concept_probs[concept_ids]), normalised."""
    weights = concept_probs[concept_of_image]
    return weights / weights.sum()


def cure_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    class_images: list[torch.Tensor],
    class_probs: list[np.ndarray],
    mix_alpha: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """CE(batch) + for each class c: CE(the images with y != c mixed with class-c concept
    images drawn by `class_probs[c]`, label y); a class with fewer than 2 others is skipped."""
    loss = F.cross_entropy(model(x), y)
    for c, (images, probs) in enumerate(zip(class_images, class_probs)):
        others = y != c
        n = int(others.sum())
        if n < 2:  # theirs: "avoid shape error"
            continue
        drawn = images[rng.choice(len(images), n, p=probs)].to(x.device)
        mixed = mix_up(x[others], drawn, rng.beta(mix_alpha, mix_alpha, n))
        loss = loss + F.cross_entropy(model(mixed), y[others])
    return loss


# ---- the model's parts and the loop --------------------------------------------------------


def body(model: nn.Module) -> nn.Module:
    """The penultimate features: every child but the last layer, flattened (NetBottom)."""
    return nn.Sequential(*list(model.children())[:-1], nn.Flatten(1))


@torch.no_grad()
def embed(model: nn.Module, images, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features of a tensor or an ImageTable, in eval mode, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    bottom = body(model)
    if isinstance(images, torch.Tensor):
        batches = images.split(batch_size)
    else:
        loader = torch.utils.data.DataLoader(images, batch_size, shuffle=False)
        batches = (batch[0] for batch in loader)
    return torch.cat([bottom(b.to(device)).cpu() for b in batches])


@dataclass
class Plan:
    """What the ERM model decides once: each class's concepts and each image's cluster."""

    class_concepts: list[np.ndarray]  # indices into the bank's concepts
    relevance: np.ndarray  # classes x concepts
    clusters: np.ndarray  # per train row


def plan(erm_model: nn.Module, train_set, concepts: list[torch.Tensor], cfg: DiscConfig) -> Plan:
    erm_model = copy.deepcopy(erm_model).cpu().eval()
    embedding = embed(erm_model, train_set)
    y = train_set.y
    cavs = learn_cavs(
        [embed(erm_model, t).numpy() for t in concepts],
        cfg.n_concept_imgs,
        cfg.c_svm,
        np.random.default_rng([cfg.seed, 0]),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    class_concepts, probs = filter_concepts(embedding, y, erm_model.fc, cavs, generator)
    with torch.no_grad():
        correct = (erm_model.fc(embedding).argmax(1).numpy() == y).astype(np.float32)
    clusters = class_clusters(embedding.numpy(), correct, y, cfg.n_clusters, cfg.reducer, cfg.seed)
    return Plan(class_concepts, probs, clusters)


def train(config, root, table, groups, erm_model, bank: Path, names: list[str]) -> tuple:
    """The DISC model, selected on val WGA; and a summary of its concepts (JSON-ready)."""
    cfg = config.disc
    clf = with_recipe(config, cfg.recipe).classifier
    size = config.data.image_size
    seed_everything(cfg.seed)
    train_table = split_table(table, "train")
    train_set = ImageTable(root, train_table, train_transform(size, clf.augment, clf.crop_scale))
    val_set = ImageTable(root, split_table(table, "val"), eval_transform(size))
    concepts = load_concept_tensors(bank, names, cfg.n_concept_imgs, size)
    decided = plan(erm_model, ImageTable(root, train_table, eval_transform(size)), concepts, cfg)
    for c, kept in enumerate(decided.class_concepts):
        log.info("disc: class %s concepts %s", groups.class_names[c], [names[k] for k in kept])

    device = resolve_device(clf.device)
    model = build_classifier(clf.arch, groups.n_classes, clf.pretrained, clf.weights).to(device)
    speed = Speed.for_device(device, clf)
    weights = (
        group_balanced_weights(train_table["group"].to_numpy()) if cfg.reweight_groups else None
    )
    loader = train_loader(train_set, clf, cfg.seed, speed, sample_weights=weights)
    optimizer = make_optimizer(model, clf, fused=speed.fused)
    scheduler = None
    if clf.schedule == "cosine":  # per step, down to 0 at the last step (as train_classifier)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, clf.epochs * len(loader))
    rng = np.random.default_rng([cfg.seed, 1])
    y = train_set.y
    # the class's concept images, and its concepts' index in `names` per image
    class_images = [torch.cat([concepts[k] for k in kept]) for kept in decided.class_concepts]
    image_concept = [
        np.repeat(np.arange(len(kept)), [len(concepts[k]) for k in kept])
        for kept in decided.class_concepts
    ]
    used = sorted({int(k) for kept in decided.class_concepts for k in kept})
    best, best_state, best_epoch, history, sensitivities = (-1.0, -1.0), None, 0, [], []
    for epoch in range(clf.epochs):
        if epoch % 2 == 0:  # train.py: new permutations every 2 epochs
            perm = np.stack([rng.permutation(cfg.n_clusters) for _ in range(groups.n_classes)])
            envs = [e for e in environments(y, decided.clusters, perm) if len(e)]
        # discover, on the current model
        cavs = learn_cavs(
            [embed(model, concepts[k]).numpy() for k in used], cfg.n_concept_imgs, cfg.c_svm, rng
        )
        normalized = torch.as_tensor(cavs.normalized(), dtype=torch.float32, device=device)
        tendencies = []
        for env in envs:
            rows = rng.permutation(env)[: clf.batch_size]
            images = torch.stack([train_set[int(r)][0] for r in rows]).to(device)
            lr = min(CTS_MAX_BATCHES, -(-len(env) // clf.batch_size)) * clf.lr
            tendencies.append(
                environment_tendency(
                    model, images, torch.as_tensor(y[rows], device=device), normalized, lr
                )
            )
        position = {k: i for i, k in enumerate(used)}
        class_probs = []
        for c, kept in enumerate(decided.class_concepts):
            concept_probs = sensitivity(tendencies, np.array([position[k] for k in kept]), c)
            class_probs.append(image_probabilities(image_concept[c], concept_probs))
            sensitivities.append(
                {
                    "epoch": epoch + 1,
                    "class": groups.class_names[c],
                    **{names[k]: float(p) for k, p in zip(kept, concept_probs)},
                }
            )
        # cure
        model.train()
        total, count = 0.0, 0
        for x, yb, _, _ in loader:
            x, yb = speed.to_device(x, device), yb.to(device)
            with speed.autocast_context(device):
                loss = cure_loss(model, x, yb, class_images, class_probs, cfg.mix_alpha, rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        val = evaluate_split(model, val_set, clf.batch_size)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / count,
                "val_wga": val["wga"],
                "val_mean_acc": val["mean_acc"],
            }
        )
        log.info("disc: epoch %d, loss %.3f, val WGA %.3f", epoch + 1, total / count, val["wga"])
        if (val["wga"], val["mean_acc"]) > best:
            best = (val["wga"], val["mean_acc"])
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch + 1
    model.load_state_dict(best_state)
    summary = {
        "concepts": names,
        "class_concepts": {
            groups.class_names[c]: {names[k]: float(decided.relevance[c, k]) for k in kept}
            for c, kept in enumerate(decided.class_concepts)
        },
        "cluster_sizes": {
            groups.class_names[c]: np.bincount(decided.clusters[y == c]).tolist()
            for c in range(groups.n_classes)
        },
        "sensitivity": sensitivities,
    }
    return TrainResult(model.eval(), best_epoch, history), summary
