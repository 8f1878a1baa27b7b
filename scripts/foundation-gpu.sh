#!/usr/bin/env bash
# Train the foundation models on a lent GPU machine (no internet there), as the committed
# build was (H200, 2026-11-26). Two halves:
#   bash scripts/foundation-gpu.sh prepare                  # here: wheels + stamps into .gpu/
#   bash scripts/foundation-gpu.sh train inpaint|segmenter  # there (carry .gpu)
# One model per call: run together they share the GPU and each trains at a fraction of
# its speed, and a call brings back about 60 MB at most (inpaint is 49 MB, the segmenter
# 11 MB). The device tool sends tracked files too: models/foundation (38+ MB) must leave
# the index for the call (`git rm -r --cached -q models/foundation` and list it in
# .git/info/exclude; `git add` it back afterwards). `train` leaves 15 MB tar chunks under
# $OUT; back here:
#   cat <files_at>/<model>.tar.* | tar xf - -C models/
#   dvc commit -f foundation foundation_segmenter && dvc repro foundation_report
# params.yaml must hold the params trained with (dvc.lock records them). Budget, params as
# committed: inpaint 268 s (VAE 60 s, UNet 200 s), segmenter 313 s (300 s budget), each
# plus about 45 s of machine start and 20 s of set-up.
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
    case "${2:-}" in
      inpaint) stage=foundation folder=inpaint ;;
      segmenter) stage=foundation_segmenter folder=clipseg ;;
      *) echo "usage: $0 train inpaint|segmenter" >&2; exit 2 ;;
    esac
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
    cp -r .gpu/src/usr/share/* /usr/share/
    mkdir -p "$OUT" models/foundation
    rm -rf "models/foundation/$folder"
    # tqdm's bar lines, thinned: enough to read the step rate
    python3 -m ddb "$stage" 2>&1 | tr '\r' '\n' | awk '!/step\/s/ || NR % 200 == 0' \
      | tee "$OUT/$folder.log" | tail -20
    (cd models && tar cf - "foundation/$folder" | split -b 15m - "$OUT/$folder.tar.") ;;
  *) echo "usage: $0 prepare | train inpaint|segmenter" >&2; exit 2 ;;
esac
