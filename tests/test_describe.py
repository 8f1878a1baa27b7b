"""`ddb params --describe`: keys with their composed value, comment and listing stages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ddb.describe import describe, flatten, key_comments
from ddb.dvcfile import Stage

REPO = Path(__file__).resolve().parents[1]

CONF = """\
# a header about the file, apart from the keys

defaults:
  - _self_

prune:                         # each condition switchable
  psi: true                    # (a) p_ERM(old | x') >= Psi
  threshold: 0.6               # chosen on val WGA
                               # (0.5: 0.61, 0.6: 0.63)
  # how the score is measured
  measure: share
generate:
  prompt: "a photo of # {token}"  # the text's template
  steps: 25
"""


def test_comments_belong_to_their_keys():
    comments = key_comments(CONF)
    assert comments["prune"] == "each condition switchable"
    assert comments["prune.psi"] == "(a) p_ERM(old | x') >= Psi"  # an apostrophe is no quote
    assert comments["prune.threshold"] == "chosen on val WGA (0.5: 0.61, 0.6: 0.63)"
    assert comments["prune.measure"] == "how the score is measured"  # the line above it
    assert comments["generate.prompt"] == "the text's template"  # '#' in quotes is no comment
    assert "generate.steps" not in comments and "defaults" not in comments


def stage(name: str, *params: str) -> Stage:
    return Stage(name=name, cmd="", deps=(), params=params, outs=(), frozen=False)


def test_describe_lists_values_comments_and_stages():
    params = {"prune": {"psi": True, "threshold": 0.6}, "data": {"root": "d", "names": [1, 2]}}
    stages = {
        "prune": stage("prune", "prune"),
        "erm": stage("erm", "data"),
        "index": stage("index", "data.root"),
    }
    assert [key for key, _ in flatten(params)] == [
        "prune",
        "prune.psi",
        "prune.threshold",
        "data",
        "data.root",
        "data.names",
    ]
    text = describe(params, {"prune.threshold": "on val"}, stages, ["prune.threshold", "data"])
    assert text.splitlines() == [
        "prune.threshold: 0.6",
        "    # on val",
        "    stages: prune",
        "data:",
        "    stages: erm",
        "data.root: d",
        "    stages: erm, index",
        "data.names: [1, 2]",
        "    stages: erm",
    ]
    assert "(none lists it)" in describe({"report": {"seeds": 3}}, {}, stages, [])


def ddb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ddb", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_the_command_describes_the_composed_profile():
    out = ddb("params", "--describe", "prune.threshold", "classifier.epochs", "debug=tiny")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[lines.index("prune.threshold: 0.6") + 2] == "    stages: prune"
    assert "chosen on val WGA" in lines[lines.index("prune.threshold: 0.6") + 1]
    # the tiny profile's value, and every stage that trains a classifier
    epochs = lines.index("classifier.epochs: 2")
    assert lines[epochs + 2] == "    stages: erm, baselines, disc, retrain, retrain_no_prune"
    bad = ddb("params", "--describe", "prune.treshold")
    assert bad.returncode == 2 and "prune.treshold" in bad.stderr
