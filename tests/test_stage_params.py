"""Each stage reads only the params its dvc.yaml entry lists (else DVC would not re-run it
when one of the others changes): the keys every stage read while the tiny project was built
(recorded through DDB_PARAMS_LOG, ddb.params_log) against its `params`, prefix-matched."""

from __future__ import annotations

import pytest

from ddb.dvcfile import covers, pipeline_stages, read_stages
from tests.conftest import params_log

# Images are read from data.root, which only `index` lists (DVC walks a directory dep once
# per stage listing it): table.csv, a dep of these stages, carries every image's md5, so a
# changed image or another data.root still re-runs them.
IMAGES_BY_PATH = "images by path; table.csv (a dep) carries their md5"
# erm and baselines check, before training, that select will find enough train images
# (ddb.training.load_training_data): it fails or passes, never changes what they write, and
# listing the keys would retrain every classifier when select's K changes.
FAIL_EARLY = "a fail-early check for select; outputs unchanged"
# groups_of(config.data) builds the Groups of both name lists; these stages use only its
# class_names (listed), so a renamed place changes nothing they write.
GROUPS = "read by groups_of() with class_names; unused"
# With data.class_names / place_names null, groups_of() names the groups after data.root's
# format (ddb.data.formats.own_groups: the format the index recorded, or data.format; for
# CelebA also data.celeba's two attributes). Those keys change the index's table.csv and so
# every output upstream of these stages (ERM's, the metrics), which re-runs them anyway.
FORMAT_NAMES = "the groups' names follow data.root's format; upstream outputs change with it"

# Keys a stage may read unlisted, each with why that is safe. A new entry needs a reason as
# good: otherwise list the key in the stage's dvc.yaml params.
READ_UNLISTED = {
    **{
        (stage, "data.root"): IMAGES_BY_PATH
        for stage in ("segment", "invert", "generate", "score", "prune")
    },
    **{
        (stage, key): FAIL_EARLY
        for stage in ("erm", "baselines")
        for key in ("select.sources_per_class", "invert.num_images")
    },
    **{(stage, "data.place_names"): GROUPS for stage in ("select", "invert", "prune")},
    **{
        (stage, "data.format"): FORMAT_NAMES
        for stage in ("select", "segment", "invert", "generate", "prune", "report")
    },
    **{(stage, "data.root"): FORMAT_NAMES for stage in ("select", "report")},
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


def test_each_allowed_exception_still_happens(reads):
    # an entry no stage needs any more would hide the next real gap under its name
    stale = {(stage, key) for stage, key in READ_UNLISTED if key not in reads.get(stage, ())}
    assert stale == set(), "remove these from READ_UNLISTED"
