import dataclasses
import functools

import pytest
import yaml

from ddb.config import Config, ConfigError, Recipe, load_config
from tests.conftest import REPO, default_config, default_params, load_config_text, merge


def test_params_yaml_is_valid_and_matches_conf():
    # params.yaml spells out conf/'s defaults, so a user sees each knob; they must agree.
    assert load_config(REPO / "params.yaml") == default_config()


def with_changes(text: str) -> str:
    """conf/'s default params with the keys in `text` changed (or added)."""
    params = default_params()
    merge(params, yaml.safe_load(text))
    return yaml.safe_dump(params, sort_keys=False)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("erm:\n  seed: one\n", ["erm.seed", "int"]),
        ("classifier:\n  lr: true\n", ["classifier.lr", "float"]),
        ("erm:\n  sed: 1\n", ["erm.sed", "erm.seed"]),  # typo gets a suggestion
        ("ermm:\n  seed: 1\n", ["ermm", "erm"]),
        ("prepare:\n  correlation: 0.5\n", ["prepare.correlation", "(0.5, 1]"]),
        ("prepare:\n  correlation: 1.2\n", ["prepare.correlation"]),
        ("prepare:\n  test_per_group: 0\n", ["prepare.test_per_group", "empty split"]),
        ("classifier:\n  arch: resnet19\n", ["classifier.arch", "resnet18"]),
        ("baselines:\n  methods: [jtt_typo]\n", ["baselines.methods"]),
        ("prepare:\n  bird_scale: [0.9, 0.5]\n", ["prepare.bird_scale"]),
        ("data:\n  class_names: [a, a]\n", ["data.class_names"]),
        ("erm: 3\n", ["erm", "mapping"]),
        ("retrain:\n  gamma: [1.0]\n", ["retrain.gamma", "one weight per class"]),
        ("segment:\n  mask_shape: circle\n", ["segment.mask_shape", "outline"]),
        ("generate:\n  prompt: a photo of a bird\n", ["generate.prompt", "{token}"]),
        ("generate:\n  scheduler: dpm\n", ["generate.scheduler", "dpmsolver++"]),
        ("prune:\n  threshold: 1.5\n", ["prune.threshold", "[0, 1]"]),
        ("invert:\n  class_name: ''\n", ["invert.class_name"]),
    ],
)
def test_bad_params_name_the_key(text, names):
    with pytest.raises(ConfigError) as err:
        load_config_text(with_changes(text))
    for name in names:
        assert name in str(err.value)


def test_int_is_accepted_for_float_but_bool_is_not_an_int():
    lr = load_config_text(with_changes("classifier:\n  lr: 1\n")).classifier.lr
    assert lr == 1.0 and isinstance(lr, float)
    for text in ("erm:\n  seed: true\n", "erm:\n  seed: '1'\n", "erm:\n  seed: 1.5\n"):
        with pytest.raises(ConfigError, match="'erm.seed' must be int"):
            load_config_text(with_changes(text))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("erm: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_missing_key_is_an_error_naming_it():
    # no default lives in the code: a key left out of params.yaml is not silently filled
    params = default_params()
    del params["prune"]["threshold"]
    del params["data"]["celeba"]["seed"]
    with pytest.raises(ConfigError) as err:
        load_config_text(yaml.safe_dump(params))
    lines = str(err.value).splitlines()
    assert len(lines) == 2  # one line per bad key
    assert any("'prune.threshold' is missing" in line for line in lines)
    assert any("'data.celeba.seed' is missing" in line for line in lines)


def test_every_bad_key_gets_its_own_line():
    text = "erm:\n  seed: one\nprune:\n  threshold: 1.5\ndac:\n  gamma: 2.0\n"
    with pytest.raises(ConfigError) as err:
        load_config_text(with_changes(text))
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    for key in ("erm.seed", "prune.threshold", "dac.gamma"):
        assert sum(f"'{key}'" in line for line in lines) == 1


DELETE = object()  # the key left out


@pytest.mark.parametrize(
    ("path", "value", "names"),
    [
        ("prepare.bird_scale", [0.5, "x"], ["'prepare.bird_scale[1]'", "float"]),
        ("data.celeba.spurious", DELETE, ["'data.celeba.spurious' is missing"]),
        ("data.celeba", 3, ["'data.celeba'", "mapping"]),
        ("judge.classifier.lr", -1.0, ["'judge.classifier.lr'", "> 0"]),
        ("baselines.jtt.recipe.lr", -1.0, ["'baselines.jtt.recipe.lr'", "> 0"]),
        ("baselines.jtt.recipe.lr", "x", ["'baselines.jtt.recipe.lr'", "float"]),
    ],
)
def test_nested_keys_are_named_in_full(path, value, names):
    params = default_params()
    *parents, last = path.split(".")
    section = functools.reduce(dict.__getitem__, parents, params)
    if value is DELETE:
        del section[last]
    else:
        section[last] = value
    with pytest.raises(ConfigError) as err:
        load_config_text(yaml.safe_dump(params))
    for name in names:
        assert name in str(err.value)


def test_sections_are_frozen_and_replace_validates():
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.prune.threshold = 0.1  # type: ignore[misc]
    lowered = dataclasses.replace(config.prune, threshold=0.3)
    assert (lowered.threshold, config.prune.threshold) == (0.3, 0.6)
    with pytest.raises(ValueError, match="prune.threshold"):
        dataclasses.replace(config.prune, threshold=1.5)


def test_a_recipe_must_name_every_key():
    with pytest.raises(ValueError, match="missing"):
        Recipe(lr=0.1)  # type: ignore[call-arg]


def test_a_wrong_yaml_type_for_the_whole_file():
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config_text("- a\n- b\n")
    assert isinstance(default_config(), Config)


def test_a_params_file_missing_many_keys_gets_a_short_message():
    params = default_params()
    del params["foundation"]  # 20 keys
    with pytest.raises(ConfigError) as err:
        load_config_text(yaml.safe_dump(params))
    lines = str(err.value).splitlines()
    assert len(lines) == 1  # the section itself is missing: one line
    assert "'foundation' is missing" in lines[0]
    params = default_params()
    sections = ("dac", "invert", "backbone", "generate", "foundation", "disc_concepts", "score")
    for section in (*sections, "foundation_segmenter"):
        for key in ("seed", "batch_size"):  # 14 keys in all
            params[section].pop(key, None)
    with pytest.raises(ConfigError) as err:
        load_config_text(yaml.safe_dump(params))
    lines = str(err.value).splitlines()
    assert len(lines) == 11 and "more" in lines[-1] and "ddb params" in lines[-1]
