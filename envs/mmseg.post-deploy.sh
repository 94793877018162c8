#!/usr/bin/env bash
# Install the mmsegmentation backend of the segmentation task (model.backend: mmseg) into
# the active Python environment, next to the project's torch:
#
#   bash envs/mmseg.post-deploy.sh        # ~12 min the first time on 2 cores, seconds after
#
# Snakemake runs it too, as the post-deploy script of envs/mmseg.yaml (--use-conda), so it
# must stay self-contained (Snakemake runs a copy of it).
#
# mmseg 1.2.2 imports mmcv's compiled ops, and PyPI has no CPU wheel of full mmcv 2.1.0 for
# torch 2.14, so mmcv is built here from its sdist (CPU ops only). Two changes make that
# build work: torch 2.14's headers need C++20 while mmcv's setup.py asks for C++17, and
# mmcv's setup.py needs setuptools<70 (torch wants >=77 back afterwards). The built wheel is
# kept in $TAROT_WHEEL_CACHE (default ~/.cache/tarot-select/wheels), one folder per torch
# version, so the next install is a plain wheel install.
set -euo pipefail

MMCV=2.1.0
MMCV_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
MMCV_URL=https://files.pythonhosted.org/packages/a7/19/f97f0fd4d432113a232e75f965335be6b7bb6557ae9faf8051e9a012cadd/mmcv-$MMCV.tar.gz
PY=${PYTHON:-python}

torch_version=$("$PY" -c "import torch; print(torch.__version__)") || {
    echo "install-mmseg: torch is not importable with $PY; install the project first (README)" >&2
    exit 1
}
cache=${TAROT_WHEEL_CACHE:-$HOME/.cache/tarot-select/wheels}/torch-$torch_version
mkdir -p "$cache"

if ! ls "$cache"/mmcv-$MMCV-*.whl >/dev/null 2>&1; then
    echo "install-mmseg: building mmcv $MMCV against torch $torch_version (about 12 min on 2 cores)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    curl -sSfL -o "$work/mmcv.tar.gz" "$MMCV_URL"
    echo "$MMCV_SHA256  $work/mmcv.tar.gz" | sha256sum -c --quiet
    tar xzf "$work/mmcv.tar.gz" -C "$work"
    sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-$MMCV/setup.py"
    "$PY" -m pip install -q "setuptools<70" wheel ninja
    (cd "$work/mmcv-$MMCV" &&
        MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
            "$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$work/wheel")
    "$PY" -m pip install -q "setuptools>=77"
    mv "$work"/wheel/mmcv-$MMCV-*.whl "$cache/"
fi

"$PY" -m pip install -q "$cache"/mmcv-$MMCV-*.whl "mmengine==0.10.7" "mmsegmentation==1.2.2" ftfy regex
"$PY" -c "import mmcv.ops, mmseg; print('install-mmseg: mmcv', mmcv.__version__, 'mmseg', mmseg.__version__)"
