import subprocess
import sys

from tests.conftest import tiny_params


def _ddb(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ddb", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_help_lists_every_stage():
    out = _ddb("--help")
    assert out.returncode == 0
    for stage in ("prepare", "erm", "baselines", "evaluate", "report"):
        assert stage in out.stdout


def test_bad_params_fail_before_any_work_with_one_message(tmp_path, waterbirds_folder):
    params = tmp_path / "params.yaml"
    params.write_text(tiny_params(waterbirds_folder, erm={"seed": "x"}))
    out = _ddb("--params", str(params), "erm", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: params.yaml: 'erm.seed' must be int, got 'x' (str); write a whole number"
    ]
    assert not (tmp_path / "models").exists()


def test_corrupt_image_fails_before_training(tmp_path, waterbirds_folder):
    params = tmp_path / "params.yaml"
    params.write_text(tiny_params(waterbirds_folder))
    victim = next(waterbirds_folder.glob("*/*.jpg"))
    victim.write_bytes(b"\x00garbage")
    out = _ddb("--params", str(params), "index", cwd=tmp_path)
    assert out.returncode == 2
    assert victim.name in out.stderr and "unreadable image" in out.stderr
    assert not (tmp_path / "models").exists()


def test_check_command_validates_params_and_data(tmp_path, waterbirds_folder):
    params = tmp_path / "params.yaml"
    params.write_text(tiny_params(waterbirds_folder))
    out = _ddb("--params", str(params), "check", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
