#!/usr/bin/env bash
# Train the foundation models on a lent GPU machine (no internet there), as the committed
# build was. Two halves:
#   bash scripts/foundation-gpu.sh prepare    # here: wheels + source images into .gpu/
#   bash scripts/foundation-gpu.sh train      # there (carry .gpu): installs, trains, packs
# `train` leaves models/foundation as 15 MB tar chunks under $OUT; back here:
#   cat <files_at>/foundation.tar.* | tar xf - -C models/ && dvc commit -f foundation
# then `dvc repro` (foundation_report) and commit. Record the params you trained with in
# params.yaml first, so that dvc.lock matches them.
set -euo pipefail
case "${1:-}" in
  prepare)
    grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    mkdir -p .gpu/whl
    # the GPU image has torch, numpy, pillow, pandas, yaml, tqdm, tokenizers, safetensors
    .venv/bin/pip download -q --no-deps --only-binary=:all: -d .gpu/whl \
      diffusers==0.42.1 transformers==5.24.0 open-clip-torch==3.3.0 importlib_metadata
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .gpu/whl regex==2026.11.19
    .venv/bin/python - <<'PY'
import shutil
from pathlib import Path
from ddb.data import corpus
for f in corpus.object_paths() + list(corpus.NEUTRAL_SCENES):
    dst = Path(".gpu/src" + str(f))
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(f, dst)
PY
    du -sh .gpu ;;
  train)
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
    cp -r .gpu/src/usr/share/* /usr/share/
    mkdir -p "$OUT"
    rm -rf models/foundation
    python3 -m ddb foundation 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' | tee "$OUT/log.txt" | tail -30
    (cd models && tar cf - foundation | split -b 15m - "$OUT/foundation.tar.") ;;
  *) echo "usage: $0 prepare|train" >&2; exit 2 ;;
esac
