"""Write tiny stand-ins where a real download would be: the Hugging Face hub cache
(`$HF_HOME/hub/models--org--name/refs/main` and `snapshots/<sha>/`) and the torch hub cache
(`$TORCH_HOME/hub/checkpoints/<torchvision file name>`), so that the code that loads the
paper's checkpoints runs unchanged, offline, on them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path


def hub_snapshot(
    hf_home: Path, repo_id: str, save: Callable[[Path], None], revision: str | None = None
) -> Path:
    """Save a model into the HF hub cache under `hf_home` as `repo_id` at commit `revision`
    (default: a made-up 40-hex sha); return the snapshot. `refs/main` points at it.

    `save(folder)` writes the files (e.g. `lambda d: model.save_pretrained(d)`). The layout is
    huggingface_hub's: `hub/models--org--name/refs/main` holds the commit sha, and
    `snapshots/<sha>/` the files (a download keeps blobs apart and links them; plain files
    at the same paths are what `local_files_only=True` resolves).
    """
    org_name = repo_id.replace("/", "--")
    repo = Path(hf_home) / "hub" / f"models--{org_name}"
    sha = revision or hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    save(snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot


def torch_hub_checkpoint(torch_home: Path, url: str, state_dict) -> Path:
    """Save `state_dict` where torchvision looks for the weights at `url`:
    `$TORCH_HOME/hub/checkpoints/<the url's file name>`."""
    import torch

    path = Path(torch_home) / "hub" / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path
