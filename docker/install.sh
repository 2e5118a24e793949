#!/usr/bin/env bash
# Installs squeezecaffe from a source tree into a Python environment that already has torch (the GPU image's
# base does), then proves the install works. docker/Dockerfile runs exactly this, and so does the test suite
# (tests/test_docker_install.py) on the plain CI machine, so the image's install steps cannot rot unseen.
#   [EXTRAS=caffe-cuda] docker/install.sh SOURCE_DIR [PYTHON]   (EXTRAS: the package's extras to install with it)
set -euo pipefail
src=${1:?usage: docker/install.sh SOURCE_DIR [PYTHON]}
py=${2:-python3}
"$py" -c 'import torch' 2>/dev/null || { echo "install.sh: $py has no torch (the image's base provides it)" >&2; exit 1; }
"$py" -m pip install --no-cache-dir --quiet "$src${EXTRAS:+[$EXTRAS]}"
# the smoke test: the CLI starts, knows its models, and reports engines and devices
"$py" -m squeezecaffe list > /dev/null
"$py" -m squeezecaffe doctor
