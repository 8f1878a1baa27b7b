import dataclasses

import pytest
import yaml

from ddb.config import Config, ConfigError, load_config
from tests.conftest import REPO, load_config_text


def test_params_yaml_is_valid_and_matches_the_defaults():
    # params.yaml spells out every default, so a user sees each knob; they must agree.
    assert load_config(REPO / "params.yaml") == Config()


def test_every_default_key_is_in_params_yaml():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(
            section.type if isinstance(section.type, type) else getattr(Config(), section.name)
        ):
            assert key.name in raw[section.name], (
                f"{section.name}.{key.name} missing from params.yaml"
            )


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
        ("prune:\n  threshold: 1.5\n", ["prune.threshold", "[0, 1]"]),
        ("invert:\n  class_name: ''\n", ["invert.class_name"]),
    ],
)
def test_bad_params_name_the_key(text, names):
    with pytest.raises(ConfigError) as err:
        load_config_text(text)
    for name in names:
        assert name in str(err.value)


def test_int_is_accepted_for_float_but_bool_is_not_an_int():
    assert load_config_text("classifier:\n  lr: 1\n").classifier.lr == 1.0
    with pytest.raises(ConfigError):
        load_config_text("erm:\n  seed: true\n")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("erm: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
