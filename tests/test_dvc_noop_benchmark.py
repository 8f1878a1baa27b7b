"""benchmarks/dvc_noop.py at a toy size: the no-op runs nothing, and a changed image
invalidates the index stage and then every stage that lists its table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_dvc_noop_benchmark_at_toy_size(tmp_path):
    out = tmp_path / "dvc_noop.json"
    own = {name: (REPO / name).read_bytes() for name in ("params.yaml", "dvc.yaml")}
    args = ["--skip-embedded", "--images", "300", "--distinct", "20", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/dvc_noop.py"), *args, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,  # generous: minutes on a busy 2-core machine (seconds alone)
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    celeba = results["datasets"]["celeba"]
    assert celeba["files"] == 302  # the images and the two list files
    # the old design listed data.root wherever the new one lists the index's table.csv
    old_listing = len(results["honesty"]["stages_listing_table"])
    for design, listing in (("new", 1), ("old", old_listing)):
        noop = celeba[design]["noop"]
        assert noop["nothing_ran"] and noop["status_clean"] and noop["runs"] == 1
        assert celeba[design]["stages_listing_data_root"] == listing
    honesty = results["honesty"]
    assert honesty["passed"] and honesty["index_invalidated"] and honesty["clean_after_restore"]
    assert honesty["stages_invalidated_after_index"] == honesty["stages_listing_table"]
    assert "erm" in honesty["stages_listing_table"]
    assert "## DVC at dataset scale" in done.stdout
    # it ran in a scratch copy: the repository's own params and pipeline are untouched
    assert {name: (REPO / name).read_bytes() for name in own} == own
