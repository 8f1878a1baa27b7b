"""benchmarks/gpu_train.py at toy size on CPU (issue 16): it times training.py's own loader
and epoch both ways, and never records a figure that was not measured on a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_train  # noqa: E402


def test_jpegs_are_real_jpegs_of_the_asked_size(tmp_path):
    table = gpu_train.write_jpegs(tmp_path, 3, side=40)
    assert list(table.img_filename) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    for name in table.img_filename:
        with Image.open(tmp_path / name) as image:
            assert (image.format, image.size) == ("JPEG", (40, 40))


@pytest.mark.slow
def test_toy_run_on_cpu_times_both_ways_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_train, "REPO", tmp_path)  # where it would write
    monkeypatch.setattr(gpu_train, "write_section", lambda *a: pytest.fail("wrote a section"))
    figures = gpu_train.main(["--toy", "--workers", "0"])
    train = figures["train"]
    assert figures["device"] == "CPU" and train["toy"] and train["arch"] == "resnet18"
    for key in ("fp32_ips", "ours_ips", "data_only_ips"):
        assert 0 < train[key] < 1e6, key
    assert not (tmp_path / "reports").exists()


def test_full_size_refuses_to_run_without_a_gpu(monkeypatch):
    monkeypatch.setattr(gpu_train.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a GPU"):
        gpu_train.main([])
