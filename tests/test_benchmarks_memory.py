"""benchmarks/memory.py: the peak-RSS measurement, the shortened profile and the report block."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import yaml

from tests.conftest import REPO

MIB = 2**20


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("memory_benchmark", REPO / "benchmarks/memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


memory = _load_benchmark()

# b"x" * n writes every byte, so all n are resident (a bytearray(n) could stay unmapped)
ALLOCATE = "import sys, time; block = b'x' * int(sys.argv[1]); time.sleep(0.3)"
# a child and a grandchild that hold their blocks at the same time
ALLOCATE_TWICE = (
    "import subprocess, sys, time; n = sys.argv[1]; "
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import sys, time; block = b\"x\" * int(sys.argv[1]); time.sleep(0.6)', n]); "
    "block = b'x' * int(n); child.wait()"
)


def _peak(code: str, n_bytes: int) -> int:
    process = subprocess.Popen([sys.executable, "-c", code, str(n_bytes)])
    peak, anon, returncode = memory.peak_rss(process, interval=0.05)
    assert returncode == 0
    assert anon <= peak  # the anonymous pages are a part of the resident ones
    return peak


def test_peak_rss_counts_what_a_child_allocates():
    bare = _peak(ALLOCATE, 0)
    extra = _peak(ALLOCATE, 200 * MIB) - bare
    # the interpreter's own pages differ by a few MiB from one start to the next
    assert abs(extra - 200 * MIB) < 12 * MIB
    # a bare interpreter is about 10 MiB; pytest's own memory (which ru_maxrss of a child
    # forked from it would include) is not counted
    assert bare < 40 * MIB


def test_peak_rss_sums_processes_that_run_together():
    extra = _peak(ALLOCATE_TWICE, 120 * MIB) - _peak(ALLOCATE_TWICE, 0)
    # both blocks at once: 240 MiB (the kernel's per-process high-water mark alone: 120)
    assert abs(extra - 240 * MIB) < 20 * MIB


def test_anonymous_peak_counts_the_block_but_not_the_libraries():
    process = subprocess.Popen([sys.executable, "-c", ALLOCATE, str(200 * MIB)])
    peak, anon, _ = memory.peak_rss(process, interval=0.05)
    assert 200 * MIB <= anon < peak  # the block is anonymous; the interpreter's file is not


def test_peak_rss_returns_the_exit_status():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert memory.peak_rss(process, interval=0.01)[2] == 3


def _flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_shortened_default_changes_only_repetitions():
    committed = _flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    short = _flatten(yaml.safe_load(memory.profile_params("default", short=True)))
    assert short.keys() == committed.keys()
    changed = {key for key in committed if short[key] != committed[key]}
    assert changed == {"classifier.epochs", "retrain.epochs", "invert.steps"}
    assert short["classifier.epochs"] == short["retrain.epochs"] == 1


def test_memory_block_replaces_its_own_block_and_keeps_the_rest():
    report = "# Benchmarks\n\n<!-- begin: other -->\nkept\n<!-- end: other -->\n"
    report = memory.with_memory_block(report, "tiny", "tiny v1")
    report = memory.with_memory_block(report, "default", "default v1")
    report = memory.with_memory_block(report, "tiny", "tiny v2")
    assert "<!-- begin: other -->\nkept\n<!-- end: other -->" in report
    assert "tiny v1" not in report
    assert report.count("<!-- begin: memory -->") == 1
    assert report.count("## Peak memory") == 1
    memory_section = report.split("<!-- begin: memory -->")[1].split("<!-- end: memory -->")[0]
    assert "<!-- begin: memory/tiny -->\ntiny v2\n<!-- end: memory/tiny -->" in memory_section
    assert "<!-- begin: memory/default -->\ndefault v1\n<!-- end: memory/default -->" in (
        memory_section
    )


def test_comparison_sets_the_shortened_stages_against_the_unchanged_ones():
    def run(peaks_mib):
        return {stage: memory.Measurement(mib * MIB, 1.0, 0) for stage, mib in peaks_mib.items()}

    # prepare reads no shortened key (dvc.yaml), so its 10% is noise; erm reads classifier
    text = memory.comparison_text(
        {"as is": run({"prepare": 100, "erm": 200}), "shortened": run({"prepare": 110, "erm": 196})}
    )
    assert "(prepare)" in text
    assert "differ by up to 10%" in text
    assert "shortened stages differ by up to 2%" in text


# a block, then two forks in a row: four processes sharing its pages, none writing them
FORK_TWICE = (
    "import os, sys, time; block = b'x' * int(sys.argv[1]); "
    "children = [os.fork(), os.fork()]; time.sleep(0.8); "
    "[os.waitpid(pid, 0) for pid in children if pid]"
)


def test_pss_counts_pages_that_forked_processes_share_once():
    """Forked workers share their parent's pages: summed RSS counts the block once per
    process, summed PSS once in all."""
    n = 150 * MIB
    bare = memory.peak_memory(subprocess.Popen([sys.executable, "-c", FORK_TWICE, "0"]), 0.05)
    full = memory.peak_memory(subprocess.Popen([sys.executable, "-c", FORK_TWICE, str(n)]), 0.05)
    assert full.returncode == 0
    assert full.rss - bare.rss > 3.5 * n
    assert abs((full.pss - bare.pss) - n) < 0.1 * n
