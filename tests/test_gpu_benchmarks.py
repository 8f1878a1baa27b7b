"""benchmarks/gpu_generate.py: its toy run (CPU or GPU), and that it records only figures
measured on a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from tests.conftest import REPO


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "gpu_generate", REPO / "benchmarks/gpu_generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_generate = _load_benchmark()
REPORTS = [REPO / "reports/gpu.json", REPO / "reports/benchmarks.md"]
on_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does")


def _contents():
    return [path.read_bytes() if path.is_file() else None for path in REPORTS]


@pytest.mark.slow
def test_toy_run_times_the_three_ways_and_writes_nothing():
    before = _contents()
    figures = gpu_generate.main(["--toy", "--batches", "1", "--naive-images", "1"])
    g = figures["generate"]
    for key in ("naive_ips", "authors_ips", "ours_ips"):
        assert g[key] > 0
    assert g["unet_tflop_per_call"] > 0 and g["toy"] and g["size"] == 32
    assert "unet_peak_share" in g and "device" in figures
    assert _contents() == before  # a toy run prints; it records only when told (--write)
    assert "| ours: the generate stage" in gpu_generate.section(figures)


@on_cpu
def test_no_gpu_figures_without_a_gpu():
    before = _contents()
    with pytest.raises(SystemExit, match="full size needs a GPU"):
        gpu_generate.main([])
    with pytest.raises(SystemExit, match="holds GPU figures"):
        gpu_generate.main(["--toy", "--write"])
    assert _contents() == before


def test_peaks_by_device_name_and_the_report_keeps_other_keys(tmp_path):
    assert gpu_generate.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_generate.peak_tflops("NVIDIA H100 PCIe") == 756
    assert gpu_generate.peak_tflops("NVIDIA H200") == 989
    assert gpu_generate.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_generate.peak_tflops("Some New GPU") is None
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "train": {"steps_per_s": 3.0}}))
    gpu_generate.merge_json(path, {"device": "NVIDIA H200", "generate": {"ours_ips": 9.0}})
    assert json.loads(path.read_text()) == {
        "device": "NVIDIA H200",
        "train": {"steps_per_s": 3.0},
        "generate": {"ours_ips": 9.0},
    }


def test_the_configs_are_sd2_inpaintings_shapes():
    """512 px latents of 64, 9 input channels, the 1024-wide OpenCLIP text tower (23
    layers: SD 2 uses the penultimate one), the VAE's 8x downsampling."""
    settings = gpu_generate.Settings(
        toy=False, steps=50, guidance=7.5, batch_size=32, batches=2, naive_images=4, compile=True
    )
    assert settings.size == 512
    assert gpu_generate.SD2_INPAINT_UNET["in_channels"] == 9
    assert gpu_generate.SD2_INPAINT_UNET["cross_attention_dim"] == 1024
    assert gpu_generate.SD2_INPAINT_TEXT["hidden_size"] == 1024
    assert gpu_generate.SD2_INPAINT_TEXT["num_hidden_layers"] == 23
