"""README's "one experiment per GPU": a DVC queue worker runs its experiments with the
environment of the shell that started it, so clones whose queues were started with
different CUDA_VISIBLE_DEVICES run side by side, each on its own GPU. On CPU a stand-in
variable plays CUDA_VISIBLE_DEVICES. (Several workers of one queue cannot be given one GPU
each: `dvc queue start -j k` starts every worker below k that does not answer celery's
inspection, and a busy worker does not; this test once saw it start two.)"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import commit_all, run_in

pytestmark = pytest.mark.slow

STAGE = """stages:
  s:
    cmd: 'sleep 2 && echo "{\\"seed\\": ${seed}, \\"gpu\\": $FAKE_GPU}" > seen.json'
    params: [seed]
    metrics:
      - seen.json:
          cache: false
"""


def _seen(project: Path) -> dict[int, int]:
    """seed -> the FAKE_GPU its experiment saw, from `dvc exp show --json`."""
    shown = json.loads(run_in(project, "dvc", "exp", "show", "--json", "--no-fetch"))
    seen = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                metrics = ((rev.get("data") or {}).get("metrics") or {}).get("seen.json")
                if metrics:
                    seen[metrics["data"]["seed"]] = metrics["data"]["gpu"]
    return seen


def _finished(project: Path) -> bool:
    status = run_in(project, "dvc", "queue", "status")
    return "Queued" not in status and "Running" not in status


def test_each_clone_queue_runs_with_the_environment_it_was_started_with(tmp_path):
    first = tmp_path / "clone0"
    first.mkdir()
    run_in(first, "git", "init", "-q")
    run_in(first, "dvc", "init", "-q")
    (first / "params.yaml").write_text("seed: 0\n")
    (first / "dvc.yaml").write_text(STAGE)
    commit_all(first, "a one-stage project")
    second = Path(shutil.copytree(first, tmp_path / "clone1", symlinks=True))
    clones = {first: (1, 2), second: (3, 4)}  # clone -> its seeds
    try:
        for gpu, (clone, seeds) in enumerate(clones.items()):
            for seed in seeds:
                run_in(clone, "dvc", "exp", "run", "--queue", "-q", "-S", f"seed={seed}")
            run_in(clone, "dvc", "queue", "start", "-j", "1", env={"FAKE_GPU": str(gpu)})
        deadline = time.monotonic() + 240
        while not all(_finished(clone) for clone in clones):
            assert time.monotonic() < deadline, "the queues did not finish in 240 s"
            time.sleep(1)
    finally:
        for clone in clones:
            run_in(clone, "dvc", "queue", "stop", "--kill")
    for gpu, (clone, seeds) in enumerate(clones.items()):
        assert _seen(clone) == {seed: gpu for seed in seeds}
