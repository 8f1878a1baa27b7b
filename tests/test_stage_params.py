"""Each stage reads only the params its dvc.yaml entry lists (else DVC would not re-run it
when one of the others changes): the keys every stage read while the tiny project was built
(recorded through DDB_PARAMS_LOG, ddb.params_log) against its `params`, prefix-matched."""

from __future__ import annotations

import pytest

from ddb.dvcfile import covers, pipeline_stages, read_stages
from tests.conftest import params_log

# Keys a stage may read unlisted, each with why that is safe. A new entry needs a reason as
# good: otherwise list the key in the stage's dvc.yaml params.
READ_UNLISTED = {
    # Images are read from data.root, which only `index` lists (DVC walks a directory dep
    # once per stage listing it); table.csv, a dep of these stages, carries every image's
    # md5, so a changed image or another data.root still re-runs them.
    ("prune", "data.root"): "images by path; table.csv (a dep) carries their md5",
    ("generate", "data.root"): "images by path; table.csv (a dep) carries their md5",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reads(tiny_project) -> dict[str, set[str]]:
    folder = params_log(tiny_project)
    return {log.stem: set(log.read_text().split()) for log in folder.glob("*.txt")}


def test_every_stage_that_ran_recorded_its_reads(reads):
    assert set(reads) == set(pipeline_stages())
    # the recording works: erm reads its seed and the shared recipe
    assert {"erm.seed", "classifier.lr", "classifier.epochs"} <= reads["erm"]


def test_each_stage_reads_only_the_params_dvc_yaml_lists(reads):
    stages = read_stages()
    unlisted = {
        (stage, key)
        for stage, keys in reads.items()
        for key in keys
        if not any(covers(listed, key) for listed in stages[stage].params)
    }
    assert unlisted - set(READ_UNLISTED) == set(), "list these keys in dvc.yaml"
