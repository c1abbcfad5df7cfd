#!/usr/bin/env bash
# The GPU check of issues 8 and 17 as one short script, for a machine with an NVIDIA GPU where
# python3 has CuPy and CUDA PyTorch (the project's device image has both, and pytest, hypothesis
# and SciPy). Run from the repository root; it needs no install (PYTHONPATH) and no network:
#
#     bash validation/gpu_check.sh            # about 5 minutes; logs in $OUT (or /tmp/refvae-gpu)
#
# 1. every test case that runs on real CuPy (the `cupy` parameter of the `bk`/`bk32` fixtures and
#    the other tests whose id names cupy), not the `strict` stand-in's: with REFVAE_REQUIRE_CUPY=1
#    a CuPy case that cannot get a GPU fails instead of skipping, and the check fails unless every
#    collected `[cupy` case passed and there was at least one;
# 2. `refvae bench --backend cupy` at batch 4096 against PyTorch CUDA (target: refvae's throughput
#    at least PyTorch's).
# Exit status 0 only when the device was found, the CuPy cases all passed and the bench ran.
set -u -o pipefail
OUT=${OUT:-/tmp/refvae-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 REFVAE_REQUIRE_CUPY=1
status=0

python3 - <<'PY' 2>&1 | tee "$OUT/device.log" || exit 1
import cupy, torch
print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount(),
      cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
PY

timeout 300 python3 -m pytest -q -p no:cacheprovider -k "cupy and not strict" \
    --junitxml="$OUT/pytest_cupy.xml" tests 2>&1 | tee "$OUT/pytest_cupy.log" || status=1
python3 - "$OUT/pytest_cupy.xml" <<'PY' 2>&1 | tee -a "$OUT/pytest_cupy.log" || status=1
import sys, xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "[cupy" in c.get("name", "")]
passed = [c for c in cases if not any(ch.tag in ("failure", "error", "skipped") for ch in c)]
print(f"real-CuPy cases: {len(passed)} passed of {len(cases)} collected")
sys.exit(0 if cases and len(passed) == len(cases) else 1)
PY

timeout 240 python3 -m refvae.cli.main bench --backend cupy --arch examples deep --batch 4096 \
    --dtype float32 float64 --steps 40 2>&1 | tee "$OUT/bench_cupy.log" || status=1
echo "gpu_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
