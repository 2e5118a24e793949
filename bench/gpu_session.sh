#!/bin/bash
# The GPU measurements, prepared so that a short lease of one GPU machine brings them back in one or two commands.
# Run from the repository root on the GPU machine (PyTorch with CUDA there; nothing else needed from the network):
#
#   bash bench/gpu_session.sh [--dry-run] OUTDIR STEP...   STEP: caffe | tests | speed | scale | demo (in order)
#
#   --dry-run  the same scripts on the CPU with toy sizes and fewer axes (fullbypass8 only, fp32, no --full), about
#              a minute for all five steps, to find what broke before a lease is spent; its figures mean nothing.
#              `tests/test_gpu_session.py` runs it for speed, scale and tests, and caffe where the CPU Caffe is
#              built; the demo step needs Fashion-MNIST's files in $FASHION, so no test runs it.
#
#   caffe  real Caffe with CUDA from the bundle in .caffe-bundle/ (squeezecaffe build-caffe --cuda --bundle
#          .caffe-bundle, made on the CPU machine and carried): doctor, the GPU test of Caffe (tests/
#          test_gpu_caffe.py: CPU mode = GPU mode), and bench/caffe_vs_torch.py --device cuda (images/s of real
#          Caffe and of the torch engine on the same GPU, fullbypass8/12 at batch 256)
#   tests  the `gpu` test lane (tests/test_gpu.py, tests/test_gpu_caffe.py): CUDA against the CPU engine, device
#          batches, 2 ranks = 1 rank, Caffe on the GPU
#   speed  bench/train_speed.py on CUDA: fullbypass8/12, batch 64/256/1024, engine vs hand-written, LMDB loader,
#          in-memory data, peak memory
#   scale  bench/tiny_scale.py: 100,000 synthetic 64x64 JPEGs -> build-lmdb -> one epoch of fullbypass12 on CUDA
#   demo   `squeezecaffe demo --full --device cuda`: the full demo's curve, test top-1 and wall time
#
# Each step runs under its own time limit (seconds: CAFFE_S, TESTS_S, SPEED_S, SCALE_S, DEMO_S) and writes STEP.log (and
# STEP.json) into OUTDIR; OUTDIR/summary.txt gets the machine and one line per step (exit code, seconds).
# Wheels in $WHEELS (default .whl/: lmdb, which the GPU image lacks) are installed into /tmp/site first (not in a
# dry run). The demo reads Fashion-MNIST's IDX files from $FASHION (default .fmnist/: copy
# /usr/share/datasets/fashion-mnist/*.gz there). Scratch (databases, runs) goes to $WORK (default /tmp/gpu_session).
set -u
dry=0
args=()
for a in "$@"; do
  if [ "$a" = --dry-run ]; then dry=1; else args+=("$a"); fi
done
set -- "${args[@]}"
out=${1:?usage: bash bench/gpu_session.sh [--dry-run] OUTDIR STEP...}
shift
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
wheels=${WHEELS:-.whl}
if [ $dry = 0 ] && compgen -G "$wheels/*.whl" >/dev/null; then  # (built for the GPU machine's Python: not here)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
  echo "cpus $(nproc)"
} >>"$out/summary.txt"

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 started rc
  shift 2
  started=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc, $(($(date +%s) - started)) s (limit $limit s)" | tee -a "$out/summary.txt"
}

# What each step runs: on the GPU (the figures), or with --dry-run the same commands on the CPU at toy sizes.
if [ $dry = 1 ]; then
  device=cpu
  caffe_args="--models fullbypass8 --batch 4 --warmup 1 --iters 2"
  speed_args=(--models fullbypass8 --cpu-batches 4 --amps fp32 --layouts nchw,nhwc --warmup 1 --iters 2 --repeats 1
              --workers 1 --records 64)
  scale_args=(--images 64 --val-images 32 --classes 4 --batch-size 16 --jobs 2)
  demo_args=(--epochs 1 --train-images 300 --val-images 100)
else
  device=cuda
  caffe_args="--models fullbypass8,fullbypass12 --batch 256 --iters 20"
  speed_args=(--models fullbypass8,fullbypass12 --batches 256,1024 --amps fp32,bf16 --layouts nchw,nhwc --iters 10
              --repeats 2 --workers 8)
  scale_args=(--batch-size 256)
  demo_args=(--full)
fi

work=${WORK:-/tmp/gpu_session}  # the steps' scratch: databases, runs
bundle=${CAFFE_BUNDLE:-$PWD/.caffe-bundle}
# On the GPU, Caffe is the carried CUDA bundle; a dry run takes the CPU build `make caffe` cached (no CUDA here).
if [ $dry = 0 ]; then export SQUEEZECAFFE_CAFFE_HOME=$bundle; else unset SQUEEZECAFFE_CAFFE_HOME; fi
caffe_step() {
  [ $dry = 1 ] || [ -f "$bundle/build.json" ] || {
    echo "no Caffe bundle at $bundle (build-caffe --cuda --bundle .caffe-bundle)"; return 2; }
  python3 -m squeezecaffe doctor || return 1
  python3 -m pytest -q -m gpu tests/test_gpu_caffe.py -p no:cacheprovider || return 1
  # shellcheck disable=SC2086  # caffe_args: words without spaces
  python3 bench/caffe_vs_torch.py --device $device $caffe_args --json "$out/caffe.json"
}
export -f caffe_step
export dry device caffe_args bundle out

for s in "$@"; do
  case $s in
    caffe) step caffe "${CAFFE_S:-240}" bash -c caffe_step ;;
    tests) step tests "${TESTS_S:-150}" python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_gpu_caffe.py \
             -p no:cacheprovider ;;
    speed) step speed "${SPEED_S:-300}" python3 bench/train_speed.py --devices $device "${speed_args[@]}" \
             --json "$out/speed.json" ;;
    scale) step scale "${SCALE_S:-200}" python3 bench/tiny_scale.py --device $device "${scale_args[@]}" \
             --out "$work/tiny_scale" --json "$out/scale.json" ;;
    demo) step demo "${DEMO_S:-300}" python3 -m squeezecaffe demo --device $device "${demo_args[@]}" \
            --src "${FASHION:-.fmnist}" --out "$work/demo" --quiet
          # the run just made (a warm machine's $work may hold an earlier one): time to 93.5% is in its rows
          newest=$(ls -t "$work"/demo/runs/*/log.csv 2>/dev/null | head -n 1)
          [ -n "$newest" ] && cp "$newest" "$out/demo_log.csv" ;;
    *) echo "unknown step '$s' (caffe, tests, speed, scale, demo)" | tee -a "$out/summary.txt" ;;
  esac
done
