#!/usr/bin/env bash
# make docker-test: build the image FROM a local Debian base and run the CLI inside it, end to end, with no traffic
# leaving the build or the runs. Steps:
#   1. a Docker engine: `docker info`, else start dockerd when root (Debian's docker.io package)
#   2. the base image squeezecaffe-base:bookworm, made with mmdebstrap when missing (Debian packages only)
#   3. the CUDA Caffe bundle (docker/prebuilt/caffe) from the host's cached CUDA build (build-caffe --cuda, which
#      compiles it first where it is not cached: about 20 minutes on 2 cores); a wheelhouse (docker/wheels): our
#      dependencies and the CUDA runtime wheels as wheels, downloaded by the host's pip (which trusts this
#      network's TLS proxy), torch as the CPU wheel the host's .venv has
#   4. docker build (classic builder, host network) with BASE, TORCH and PIP_NO_INDEX/PIP_FIND_LINKS set
#   5. in the image, as the calling user, with --network none: list; doctor (real Caffe with CUDA found);
#      build-lmdb of a tiny image tree mounted read-only at /data into /runs; a one-epoch CPU train fullbypass8
#      with the torch engine and with real Caffe (CPU mode of the CUDA build); eval of both; then a missing /data,
#      a read-only /runs and `--engine caffe --device cuda` without a GPU must each end with one line from our CLI
#   docker/test.sh [PYTHON]   (PYTHON: the host interpreter with our package, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
base=squeezecaffe-base:bookworm
image=${IMAGE:-squeezecaffe:test}
say() { printf '[docker-test] %s\n' "$*"; }
fail() { printf '[docker-test] FAILED: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

# 1. the engine
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "no Docker engine answers and only root can start one (sudo dockerd &)"
  command -v dockerd >/dev/null || { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; }
  say "starting dockerd"
  (dockerd >/tmp/squeezecaffe-dockerd.log 2>&1 &)
  for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (see /tmp/squeezecaffe-dockerd.log)"
fi

# 2. the base image
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq mmdebstrap >/dev/null; }
  tar=$(mktemp --suffix=.tar)
  say "making $base with mmdebstrap"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,passwd,ca-certificates bookworm "$tar"
  docker import "$tar" "$base" >/dev/null
  rm -f "$tar"
fi

# 3. the Caffe bundle and the wheelhouse
log=$(mktemp --suffix=.log)
say "CUDA Caffe bundle: docker/prebuilt/caffe"
"$py" -m squeezecaffe build-caffe --cuda --bundle docker/prebuilt/caffe >"$log" 2>&1 \
  || { tail -5 "$log" >&2; fail "build-caffe --cuda --bundle (log: $log)"; }
torch=$("$py" -c 'import torch; print(torch.__version__)')
say "wheelhouse: torch==$torch, the package's dependencies and the CUDA runtime wheels"
{ "$py" -m pip wheel --quiet --no-deps -w docker/wheels . &&
  whl=$(ls docker/wheels/squeezecaffe-*.whl) &&
  "$py" -m pip download --quiet -d docker/wheels "torch==$torch" "$whl[caffe-cuda]" setuptools wheel
} >"$log" 2>&1 || { tail -20 "$log" >&2; fail "pip could not fill the wheelhouse (log: $log)"; }
rm -f docker/wheels/squeezecaffe-*.whl  # the image builds the package from the source tree, as a user's build does

# 4. the image
say "building $image FROM $base"
DOCKER_BUILDKIT=0 docker build --quiet --network host -f docker/Dockerfile -t "$image" \
  --build-arg BASE="$base" --build-arg TORCH="torch==$torch" \
  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels . >"$log" 2>&1 || { tail -30 "$log" >&2; fail "docker build"; }
docker image prune --force --filter label=squeezecaffe.stage=build >/dev/null  # the classic builder keeps the build stage
size=$(docker image inspect -f '{{.Size}}' "$image")

# 5. the runs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/runs"
"$py" - "$work/images" <<'PY'
import sys
from pathlib import Path
import cv2
import numpy as np
root = Path(sys.argv[1])
for label in range(3):
    for i in range(24):
        img = np.full((32, 32, 3), 40, np.uint8)
        img[:, :, label] = 120 + (i * 5) % 100  # one bright channel per class
        img[(i % 8) * 4:(i % 8) * 4 + 4] = 255
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"class{label}" / f"{i:03d}.png"), img)
PY
run() { docker run --rm --network none --user "$(id -u):$(id -g)" -v "$work/images:/data:ro" -v "$work/runs:/runs" \
          "$image" "$@"; }
run list | grep -q fullbypass12 || fail "list"
run doctor | tee "$work/doctor.txt" | grep -q "engine caffe .*available: Caffe through our C interface" \
  || { cat "$work/doctor.txt" >&2; fail "doctor: no Caffe in the image"; }
grep -q "bundle, CUDA" "$work/doctor.txt" || fail "doctor: the image's Caffe is not the CUDA bundle"
run build-lmdb /data /runs/db --val-fraction 0.25 --quiet
run train fullbypass8 --engine torch --data /runs/db --epochs 1 --batch-size 8 --workers 0 --run-dir /runs/fb8 --quiet
run eval /runs/fb8 --quiet | tee "$work/eval.txt"
grep -q "top-1" "$work/eval.txt" || fail "eval printed no top-1"
run train fullbypass8 --engine caffe --data /runs/db --epochs 1 --batch-size 8 --run-dir /runs/fb8c --quiet
run eval /runs/fb8c --engine caffe --quiet | tee "$work/eval_caffe.txt"
grep -q "top-1" "$work/eval_caffe.txt" || fail "eval --engine caffe printed no top-1"
out=$(run train fullbypass8 --engine caffe --device cuda --data /runs/db --epochs 1 --run-dir /runs/gpu 2>&1) && \
  fail "--engine caffe --device cuda without a GPU succeeded"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ "$out" == "squeezecaffe: error: --device cuda: no CUDA device"* ]] \
  || fail "no GPU: got: $out"
owner=$(stat -c %u "$work/runs/fb8/best.caffemodel")
[ "$owner" = "$(id -u)" ] || fail "files written in /runs belong to uid $owner, not the caller $(id -u)"

# bad mounts: one line from our CLI each, exit code 2
out=$(docker run --rm --network none --user "$(id -u):$(id -g)" "$image" build-lmdb /data/none /runs/db 2>&1) && \
  fail "build-lmdb without /data succeeded"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ "$out" == "squeezecaffe: error: "* ]] || fail "no /data: got: $out"
out=$(docker run --rm --network none --user "$(id -u):$(id -g)" -v "$work/images:/data:ro" -v "$work/runs:/runs:ro" \
      "$image" build-lmdb /data /runs/db2 2>&1) && fail "build-lmdb into a read-only /runs succeeded"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ "$out" == "squeezecaffe: error: "* ]] || fail "read-only /runs: got: $out"

say "passed in $(( $(date +%s) - t0 )) s; image $image: $(( size / 1000000 )) MB"
