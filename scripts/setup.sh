#!/usr/bin/env bash
# Installs what Kiln needs to build and test on Debian 12: compilers and libraries from Debian's packages,
# and the onnx Python package (its onnx-ml.proto is the schema Kiln compiles; numpy for the sample scripts).
# Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(cmake ninja-build g++ libprotobuf-dev protobuf-compiler libcli11-dev nlohmann-json3-dev
          libxxhash-dev libgtest-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import onnx, numpy" >/dev/null 2>&1; then
  echo "setup: installing the onnx and numpy Python packages"
  "$PYTHON" -m pip install -q "onnx==1.23.2" "numpy" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
