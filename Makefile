# squeezecaffe — every target installs what it needs (via `setup`) on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?= fullbypass12
OUT ?= out

.PHONY: setup demo netgen-demo caffe test test-fast test-slow test-gpu lint fashion-mnist default-data prototxt proto summary draw train build-lmdb bench-data bench-caffe docker docker-test clean

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
# A short schedule by default (a few minutes on 2 CPU cores); FULL=1 for the full one; DEVICE=cuda on a GPU.
FASHION := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@test -f $(FASHION)/train-labels-idx1-ubyte.gz || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is not installed; run: sudo apt-get install dataset-fashion-mnist"; exit 1; fi; }

demo: setup fashion-mnist
	$(BIN)/squeezecaffe demo --out $(OUT)/demo $(if $(FULL),--full) $(if $(DEVICE),--device $(DEVICE))

# The built-in default dataset (`make train` / `make build-lmdb` without DATA): all of Fashion-MNIST as a
# build-lmdb data directory (57,000 train / 3,000 val / 10,000 test, 28x28 gray), built on first use.
DEFAULT_DATA := $(OUT)/data/fashion-mnist
default-data: setup fashion-mnist
	$(BIN)/squeezecaffe default-data $(DEFAULT_DATA)

# Generate one model's prototxt and print its tables (no data needed).
netgen-demo: setup
	$(BIN)/squeezecaffe list
	$(BIN)/squeezecaffe gen $(MODEL) --out $(OUT)/$(MODEL)
	$(BIN)/squeezecaffe summary $(MODEL)
	$(BIN)/squeezecaffe draw $(MODEL) -o $(OUT)/$(MODEL)/net.png

# Real Caffe from source (brocolli-caffe 9.0.2 sources, our CMake) into ~/.cache/squeezecaffe/caffe-<recipe hash>/,
# reused when present; installs its Debian build dependencies when root. About 10 minutes the first time.
# CUDA=1: the CUDA build (caffe-cuda-<hash>/, toolkit from PyPI wheels, no GPU needed to build); BUNDLE=DIR also
# writes the portable copy for a GPU machine (docs/caffe.md).
caffe: setup
	$(BIN)/squeezecaffe build-caffe $(if $(CUDA),--cuda) $(if $(BUNDLE),--cuda --bundle $(BUNDLE))

# The test suite. It builds (or reuses) Caffe first so the parity tests run; where Caffe cannot be built
# (not root, not Debian) they are skipped, except in CI (CI=true), where that is a failure. NO_CAFFE=1 skips it.
test: setup
	@if [ -z "$(NO_CAFFE)" ]; then $(MAKE) --no-print-directory caffe || { \
	  if [ "$$CI" = true ]; then echo "CI: the Caffe build failed"; exit 1; fi; \
	  echo "Caffe could not be built here: its parity tests will be skipped"; }; fi
	$(BIN)/ruff check src tests bench
	$(if $(and $(filter true,$(CI)),$(if $(NO_CAFFE),,1)),SQUEEZECAFFE_REQUIRE_CAFFE=1) $(BIN)/python -m pytest -q

# Tiers (see docs/testing.md): `test` is the whole CPU suite (what CI runs); `test-fast` leaves out the tests
# marked slow (for day-to-day work); `test-slow` runs only those; `test-gpu` the CUDA tests (skip without a GPU).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not docker"

test-slow: setup
	$(BIN)/python -m pytest -q -m "slow and not gpu and not docker"

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

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
# Without DATA, both use the built-in default dataset (Fashion-MNIST, see default-data) and say so first.
train: setup
	@if [ -z "$(DATA)" ]; then echo "make train: no DATA given, so training on the built-in default dataset $(DEFAULT_DATA) (Fashion-MNIST); give DATA=dir for your own"; $(MAKE) --no-print-directory default-data; fi
	$(BIN)/squeezecaffe train "$(MODEL)" --data "$(or $(DATA),$(DEFAULT_DATA))" --engine "$(or $(ENGINE),auto)" --device "$(or $(DEVICE),cpu)" $(if $(EPOCHS),--epochs $(EPOCHS)) $(ARGS)

# `make print-VAR` shows what a variable expands to (with the same command-line settings), e.g. print-LMDB_OUT.
print-%:
	@echo '$($*)'

# OUT given on the command line is the data directory; without it, out/data/<name of DATA>.
LMDB_OUT = $(if $(filter command line,$(origin OUT)),$(OUT),$(OUT)/data/$(notdir $(abspath $(DATA))))
build-lmdb: setup
	@if [ -z "$(DATA)" ]; then echo "make build-lmdb: no DATA given, so building the built-in default dataset into $(DEFAULT_DATA) (Fashion-MNIST); give DATA=images [OUT=dir] for your own"; $(MAKE) --no-print-directory default-data; \
	else $(BIN)/squeezecaffe build-lmdb "$(DATA)" "$(LMDB_OUT)" $(ARGS) && echo "next: make train MODEL=$(MODEL) DATA='$(LMDB_OUT)'"; fi

# The image for NVIDIA GPUs (docs/docker.md): `docker` builds what a user runs (python:3.11 slim base, torch with
# CUDA from PyPI); `docker-test` builds it FROM a local Debian base with the CPU wheel and runs the CLI inside it.
IMAGE ?= squeezecaffe
docker:
	DOCKER_BUILDKIT=0 docker build --network host -f docker/Dockerfile -t $(IMAGE) .

docker-test: setup
	bash docker/test.sh $(BIN)/python

bench-caffe: caffe
	$(BIN)/python bench/caffe_vs_torch.py --models fullbypass8,fullbypass12 --json $(OUT)/bench_caffe_vs_torch.json

bench-data: setup
	$(BIN)/python bench/data_tools_bench.py --json $(OUT)/bench_data_tools.json

clean:
	rm -rf $(OUT) .pytest_cache
