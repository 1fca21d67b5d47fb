#!/usr/bin/env bash
# Runs the ONNX conformance suites through `kiln check` on this machine's CPU backend and writes one JSON per
# suite under bench/results/ (the figures the README quotes come from these files).
#   bench/conformance.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
date=$(date -u +%Y-%m-%d)
for suite in node simple pytorch-converted pytorch-operator; do
  out=bench/results/conformance_cpu_${suite}_${date}.json
  "$build/kiln" check -q --expected-failures tests/conformance/expected_failures.txt \
    --tolerances tests/conformance/tolerances.txt --json "$out" ../shared/onnx-backend-tests/$suite | tail -n 1
  echo "  -> $out"
done
