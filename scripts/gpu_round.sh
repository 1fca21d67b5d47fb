#!/usr/bin/env bash
# The whole GPU round, on the device machine (../shared/DEVICE.md): configure and build Kiln with the CUDA
# backend in build-gpu, run the CUDA kernel tests against the CPU reference (in parallel gtest shards) and the
# whole ctest, and write a JSON summary and the logs under $OUT. With GPU_ROUND_MODELS=quick or full it then
# runs bench/gpu_models.py (ResNet-50 and BERT-base: Kiln against PyTorch eager, CUDA graphs and
# torch.compile), into $OUT/models.
#
# The device machine has cmake, ninja, nvcc and g++ but maybe not every library Kiln builds against; run
# scripts/gpu_round.sh --stage-deps on the development machine first: it copies this machine's protobuf
# (protoc, headers and library together, so their versions match), nlohmann-json, CLI11, xxhash and
# GoogleTest into .devdeps/prefix (never committed), and the test binary built here into .devdeps/prebuilt,
# used when the build there fails. Then, from the development machine:
#   run(command="bash scripts/gpu_round.sh", carry=[".devdeps"], timeout_s=480)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.devdeps/prefix
ARCH_LIB=lib/x86_64-linux-gnu

if [[ "${1:-}" == "--stage-deps" ]]; then
  BUILD=${2:-build-cuda}
  set -e
  rm -rf .devdeps && mkdir -p "$DEPS/bin" "$DEPS/include" "$DEPS/$ARCH_LIB/cmake" "$DEPS/share/cmake" .devdeps/prebuilt/lib
  cp /usr/bin/protoc "$DEPS/bin/"
  cp -r /usr/include/google /usr/include/nlohmann /usr/include/CLI /usr/include/gtest /usr/include/gmock \
        /usr/include/xxhash.h /usr/include/xxh3.h "$DEPS/include/"
  cp -L /usr/$ARCH_LIB/libprotobuf.so.32 /usr/$ARCH_LIB/libprotoc.so.32 "$DEPS/$ARCH_LIB/"
  ln -s libprotobuf.so.32 "$DEPS/$ARCH_LIB/libprotobuf.so"
  cp /usr/$ARCH_LIB/libxxhash.a /usr/$ARCH_LIB/libgtest.a /usr/$ARCH_LIB/libgtest_main.a \
     /usr/$ARCH_LIB/libgmock.a /usr/$ARCH_LIB/libgmock_main.a "$DEPS/$ARCH_LIB/"
  cp -r /usr/$ARCH_LIB/cmake/GTest "$DEPS/$ARCH_LIB/cmake/"
  cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$DEPS/share/cmake/"
  tar czf .devdeps/node_suite.tgz -C ../shared onnx-backend-tests/node onnx-backend-tests/simple
  grep -qx '/.devdeps/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.devdeps/' >> .git/info/exclude; }
  du -sh .devdeps
  exit 0
fi

OUT=${OUT:-$ROOT/out/gpu_round}
mkdir -p "$OUT"
T0=$(date +%s)
PY=/opt/torch/.venv/bin/python3
[[ -x $PY ]] || PY=python3
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib:$DEPS/$ARCH_LIB:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH

{
  echo "== date"; date -u
  echo "== nvidia-smi"; nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  echo "== tools"; cmake --version | head -1; ninja --version; nvcc --version | tail -1; g++ --version | head -1
  echo "== libraries on this machine"
  for p in /usr/include/xxhash.h /usr/include/nlohmann /usr/include/CLI /usr/include/gtest /usr/include/google/protobuf \
           /usr/bin/protoc /usr/lib/x86_64-linux-gnu/libprotobuf.so /usr/lib/x86_64-linux-gnu/libxxhash.so; do
    [[ -e $p ]] && echo "present $p" || echo "missing $p"
  done
  [[ -f /usr/include/google/protobuf/stubs/common.h ]] && grep -m1 "define GOOGLE_PROTOBUF_VERSION" /usr/include/google/protobuf/stubs/common.h
  $PY -c "import onnx; print('onnx', onnx.__version__)" 2>&1
  echo "== carried .devdeps"; [[ -d $DEPS ]] && echo yes || echo no
} > "$OUT/env.txt" 2>&1

CMAKE_ARGS=(-S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DPython3_EXECUTABLE=$PY)
if [[ -d $DEPS ]]; then
  CMAKE_ARGS+=(-DCMAKE_PREFIX_PATH=$DEPS -DProtobuf_PROTOC_EXECUTABLE=$DEPS/bin/protoc
               -DProtobuf_INCLUDE_DIR=$DEPS/include -DProtobuf_LIBRARY=$DEPS/$ARCH_LIB/libprotobuf.so)
fi
SHARED=$ROOT/../shared
[[ -d $ROOT/shared ]] && SHARED=$ROOT/shared
# The conformance suites do not travel to the GPU machine (../shared stays behind): --stage-deps packs the
# node and simple suites into .devdeps/node_suite.tgz, unpacked here.
if [[ ! -d $SHARED/onnx-backend-tests && -f $ROOT/.devdeps/node_suite.tgz ]]; then
  mkdir -p /tmp/kiln_shared && tar xzf $ROOT/.devdeps/node_suite.tgz -C /tmp/kiln_shared && SHARED=/tmp/kiln_shared
fi
CMAKE_ARGS+=(-DKILN_SHARED_DIR=$SHARED)

BUILD_OK=false
CONFIGURE_RC=-1; BUILD_RC=-1
timeout 90 cmake "${CMAKE_ARGS[@]}" > "$OUT/configure.log" 2>&1; CONFIGURE_RC=$?
if [[ $CONFIGURE_RC == 0 ]]; then
  timeout ${GPU_ROUND_BUILD_TIMEOUT:-300} ninja -C build-gpu -j16 > "$OUT/build.log" 2>&1; BUILD_RC=$?
  [[ $BUILD_RC == 0 ]] && BUILD_OK=true
fi
T_BUILD=$(date +%s)
tail -40 "$OUT/configure.log" > "$OUT/configure.tail.txt"
grep -E "error|FAILED" "$OUT/build.log" 2>/dev/null | head -40 > "$OUT/build.errors.txt"

TEST_BIN=build-gpu/tests/kiln_tests
BINARY_FROM=device-build
if ! $BUILD_OK; then
  TEST_BIN=.devdeps/prebuilt/kiln_tests
  BINARY_FROM=prebuilt-carried
  export LD_LIBRARY_PATH=$ROOT/.devdeps/prebuilt/lib:$LD_LIBRARY_PATH
fi

CUDA_RC=-1
if [[ -x $TEST_BIN ]]; then
  # In gtest shards run at once: the tests are mostly their CPU references, and the machine has 16 cores (the
  # whole suite in under 100 s with 8, against more than 190 s alone). Their JSON reports are merged into one.
  SHARDS=${GPU_ROUND_CUDA_SHARDS:-8}
  mkdir -p "$OUT/cuda_shards"
  for i in $(seq 0 $((SHARDS - 1))); do
    GTEST_TOTAL_SHARDS=$SHARDS GTEST_SHARD_INDEX=$i timeout ${GPU_ROUND_CUDA_TIMEOUT:-200} "$TEST_BIN" \
      --gtest_filter='Cuda*:*Cuda*' --gtest_output=json:"$OUT/cuda_shards/s$i.json" > "$OUT/cuda_shards/s$i.log" 2>&1 &
  done
  wait
  cat "$OUT"/cuda_shards/s*.log > "$OUT/cuda_tests.log"
  $PY - "$OUT" <<'MERGE'
import glob, json, os, sys
out = sys.argv[1]
merged = {"tests": 0, "failures": 0, "disabled": 0, "testsuites": []}
for f in sorted(glob.glob(os.path.join(out, "cuda_shards", "s*.json"))):
    j = json.load(open(f))
    for k in ("tests", "failures", "disabled"):
        merged[k] += j.get(k, 0)
    merged["testsuites"] += j.get("testsuites", [])
json.dump(merged, open(os.path.join(out, "cuda_tests.json"), "w"), indent=1)
sys.exit(1 if merged["failures"] else 0)
MERGE
  CUDA_RC=$?
  rm -rf "$OUT/cuda_shards"
fi
T_CUDA=$(date +%s)

CTEST_RC=-1
if $BUILD_OK; then
  EXCLUDE=""
  [[ -d $SHARED/onnx-backend-tests ]] || EXCLUDE="conformance_|mnist_demo"
  BUDGET=${GPU_ROUND_CTEST_BUDGET:-440}
  LEFT=$(( BUDGET - ($(date +%s) - T0) ))  # the whole round fits one device call
  (( LEFT < 20 )) && LEFT=20
  [[ "${GPU_ROUND_SKIP_CTEST:-0}" == 1 ]] || (cd build-gpu && timeout $LEFT ctest -j8 --timeout 300 --output-on-failure ${EXCLUDE:+-E "$EXCLUDE"} > "$OUT/ctest.log" 2>&1); CTEST_RC=$?
  # The node conformance suite through the CUDA backend, with its per-test results.
  (cd build-gpu && timeout ${GPU_ROUND_CONFORMANCE_TIMEOUT:-200} ./kiln check -q --device cuda --json "$OUT/conformance_node_cuda.json" \
      --expected-failures ../tests/conformance/expected_failures.txt --tolerances ../tests/conformance/tolerances.txt \
      "$SHARED/onnx-backend-tests/node" > "$OUT/conformance_node_cuda.log" 2>&1)
fi
T_END=$(date +%s)
if $BUILD_OK && [[ "${GPU_ROUND_MODELS:-0}" != 0 ]]; then
  QUICK=""; [[ $GPU_ROUND_MODELS == quick ]] && QUICK=--quick
  timeout ${GPU_ROUND_MODELS_TIMEOUT:-300} $PY bench/gpu_models.py --kiln build-gpu/kiln --out "$OUT/models" $QUICK \
    > "$OUT/models.log" 2>&1
  rm -f "$OUT"/models/*.onnx "$OUT"/models/*.onnx.data
  cp "$OUT/models/models.json" "$OUT/models.json" 2>/dev/null
fi

$PY - "$OUT" <<PYEOF
import json, re, sys, os
out = sys.argv[1]
s = {
  "date_utc": os.popen("date -u +%Y-%m-%dT%H:%M:%SZ").read().strip(),
  "gpu": os.popen("nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>&1").read().strip(),
  "git_commit": os.popen("git rev-parse HEAD 2>/dev/null").read().strip(),
  "configure_rc": $CONFIGURE_RC, "build_rc": $BUILD_RC, "build_ok": "$BUILD_OK" == "true",
  "test_binary": "$BINARY_FROM", "cuda_tests_rc": $CUDA_RC, "ctest_rc": $CTEST_RC,
  "seconds": {"build": $T_BUILD - $T0, "cuda_tests": $T_CUDA - $T_BUILD, "ctest": $T_END - $T_CUDA},
}
try:
  j = json.load(open(os.path.join(out, "cuda_tests.json")))
  tests = []
  for suite in j.get("testsuites", []):
    for t in suite.get("testsuite", []):
      tests.append({"name": suite["name"] + "." + t["name"], "result": t.get("result"), "status": t.get("status"),
                    "failures": len(t.get("failures", [])), "time": t.get("time"),
                    "first_failure": (t.get("failures") or [{}])[0].get("failure", "")[:400]})
  s["cuda_tests"] = {"tests": j.get("tests"), "failures": j.get("failures"), "disabled": j.get("disabled"),
                     "list": tests}
except Exception as e:
  s["cuda_tests"] = {"error": str(e)}
try:
  log = open(os.path.join(out, "cuda_tests.log")).read()
  s["cuda_tests_output"] = [l for l in log.splitlines() if l.startswith(("CUDA device", "cuda_kernels_test", "bandwidth"))]
except Exception:
  pass
try:
  log = open(os.path.join(out, "ctest.log")).read()
  m = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", log)
  if m: s["ctest"] = {"passed_percent": int(m.group(1)), "failed": int(m.group(2)), "total": int(m.group(3))}
  s["ctest_failed"] = re.findall(r"^\s*\d+ - (\S+) \(", log, re.M)[:50]
except Exception:
  pass
try:
  log = open(os.path.join(out, "conformance_node_cuda.log")).read().splitlines()
  s["conformance_node_cuda"] = {"summary": [l for l in log if "passed" in l][-2:], "failures": [l for l in log if l.startswith("FAIL")][:60]}
except Exception:
  pass
try:
  s["models"] = json.load(open(os.path.join(out, "models", "models.json")))
except Exception as e:
  s["models_error"] = str(e)
json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps({k: v for k, v in s.items() if k not in ("cuda_tests", "models")}, indent=2))
ct = s.get("cuda_tests", {})
print("cuda tests:", ct.get("tests"), "failures:", ct.get("failures"))
for t in ct.get("list", []):
  if t["failures"] or t["status"] != "RUN":
    print(f"  {t['result']:10s} {t['name']} {t['time']} {t['first_failure'][:300]}")
print("conformance on CUDA:", json.dumps(s.get("conformance_node_cuda", {}))[:3000])
for r in s.get("models", {}).get("rows", []):
  print("model", json.dumps(r)[:1500])
print("models_error", s.get("models_error"))
PYEOF
# At most 8 files come back from the device: keep the JSON, pack the logs.
# (The archive is written outside $OUT first: tar refuses a directory that changes while it reads it.)
(cd "$OUT" && tar czf /tmp/gpu_round_logs.tgz --exclude=summary.json --exclude=cuda_tests.json \
   --exclude=models.json --exclude=conformance_node_cuda.json . ; mv /tmp/gpu_round_logs.tgz logs.tgz && \
 find . -mindepth 1 -not -name logs.tgz -not -name summary.json -not -name cuda_tests.json -not -name models.json \
   -not -name conformance_node_cuda.json -delete)
exit 0
