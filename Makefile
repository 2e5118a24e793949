# squeezecaffe — every target installs what it needs (via `setup`) on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= fullbypass12
OUT ?= out

.PHONY: setup demo netgen-demo caffe test test-slow lint prototxt proto summary draw train build-lmdb bench-data bench-caffe docker clean

# Create .venv and install the package with its dev tools; re-runs only when pyproject.toml changes.
# torch==2.13.0 is named first so pip takes the CPU wheel instead of a multi-GB CUDA build on machines
# that have it locally; elsewhere pip resolves torch from the range in pyproject.toml.
setup: $(STAMP)
$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  echo "installing python3-venv (needs root)"; apt-get update -qq && apt-get install -y -qq python3-venv python3-pip; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0" 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job on a built-in default: real photos (Debian's Fashion-MNIST package, installed if missing)
# -> PNG folders -> LMDB -> fullbypass8 trained with the torch engine -> test eval -> Table-3 report.
# A short schedule by default (a few minutes on 2 CPU cores); FULL=1 for the full one.
FASHION := /usr/share/datasets/fashion-mnist
demo: setup
	@test -f $(FASHION)/train-labels-idx1-ubyte.gz || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is not installed; run: sudo apt-get install dataset-fashion-mnist"; exit 1; fi; }
	$(BIN)/squeezecaffe demo --out $(OUT)/demo $(if $(FULL),--full)

# Generate one model's prototxt and print its tables (no data needed).
netgen-demo: setup
	$(BIN)/squeezecaffe list
	$(BIN)/squeezecaffe gen $(MODEL) --out $(OUT)/$(MODEL)
	$(BIN)/squeezecaffe summary $(MODEL)
	$(BIN)/squeezecaffe draw $(MODEL) -o $(OUT)/$(MODEL)/net.png

# Real Caffe from source (brocolli-caffe 9.0.2 sources, our CMake) into ~/.cache/squeezecaffe/caffe-<recipe hash>/,
# reused when present; installs its Debian build dependencies when root. About 10 minutes the first time.
caffe: setup
	$(BIN)/squeezecaffe build-caffe

# The test suite. It builds (or reuses) Caffe first so the parity tests run; where Caffe cannot be built
# (not root, not Debian) they are skipped, except in CI (CI=true), where that is a failure. NO_CAFFE=1 skips it.
test: setup
	@if [ -z "$(NO_CAFFE)" ]; then $(MAKE) --no-print-directory caffe || { \
	  if [ "$$CI" = true ]; then echo "CI: the Caffe build failed"; exit 1; fi; \
	  echo "Caffe could not be built here: its parity tests will be skipped"; }; fi
	$(if $(and $(filter true,$(CI)),$(if $(NO_CAFFE),,1)),SQUEEZECAFFE_REQUIRE_CAFFE=1) $(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests bench

# Regenerate the committed prototxt/<model>/ files (the golden files a test diffs against).
prototxt: setup
	$(BIN)/squeezecaffe prototxt

# Regenerate the committed protobuf bindings from src/squeezecaffe/proto/sqcaffe.proto (a test diffs them).
proto: setup
	$(BIN)/python -m grpc_tools.protoc -Isrc --python_out=src --pyi_out=src src/squeezecaffe/proto/sqcaffe.proto

summary: setup
	$(BIN)/squeezecaffe summary $(MODEL)

draw: setup
	$(BIN)/squeezecaffe draw $(MODEL) -o $(OUT)/$(MODEL)/net.png

# JPEG/PNG dataset -> OUT/{train,val,test}_lmdb + mean.binaryproto + labels.txt + manifest.json.
# make build-lmdb DATA=~/tiny-imagenet-200 OUT=data/tiny [ARGS="--resize 64x64 --encoded"]
DATA ?=
train: setup
	@test -n "$(MODEL)" -a -n "$(DATA)" || { echo "usage: make train MODEL=fullbypass12 DATA=data/dir [ENGINE=auto|torch|caffe] [DEVICE=cpu|cuda] [EPOCHS=N] [ARGS=...]"; exit 2; }
	$(BIN)/squeezecaffe train "$(MODEL)" --data "$(DATA)" --engine "$(or $(ENGINE),auto)" --device "$(or $(DEVICE),cpu)" $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

build-lmdb: setup
	@test -n "$(DATA)" || { echo "usage: make build-lmdb DATA=path/to/images OUT=data/name [ARGS=...]"; exit 2; }
	$(BIN)/squeezecaffe build-lmdb "$(DATA)" "$(OUT)" $(ARGS)

# The NVIDIA GPU image (needs a Docker engine; docker/install.sh is what it runs, tested by the suite).
IMAGE ?= squeezecaffe
docker:
	docker build -f docker/Dockerfile -t $(IMAGE) .

bench-caffe: caffe
	$(BIN)/python bench/caffe_vs_torch.py --models fullbypass8,fullbypass12 --json $(OUT)/bench_caffe_vs_torch.json

bench-data: setup
	$(BIN)/python bench/data_tools_bench.py --json $(OUT)/bench_data_tools.json

clean:
	rm -rf $(OUT) .pytest_cache
