#!/usr/bin/env bash
# The GPU proof of issue 28 as one command, for a machine with an NVIDIA GPU where python3 has CuPy
# (refvae[gpu]: CuPy with its CUDA libraries), CUDA PyTorch, pytest, hypothesis and SciPy. Run from
# the repository root; no install (PYTHONPATH), no network; under 7 minutes on a fresh machine
# (the parts' time limits add up to 6 min 45 s):
#
#     bash validation/gpu_check.sh            # logs in $OUT (default /tmp/refvae-gpu)
#
# 1. correctness: loss and every gradient on CuPy float64 (fast path and plain model) against
#    NumPy float64 within 1e-9, over latent × estimator × emission × activation;
# 2. the oracle in float64 on the GPU, with PyTorch CUDA tensors through check_torch;
# 3. a short training run on CuPy against the same run on NumPy;
# 4. device→host synchronisations per training step (CuPy's allow_synchronize guard; target 1);
# 5. every real-CuPy test case of the suite (REFVAE_REQUIRE_CUPY=1: none may skip);
# 6. the step time at batch 4096 against PyTorch CUDA, both architectures and both dtypes: the
#    table printed for validation/BENCH.md.
# CuPy's compiled kernels are cached in validation/.cache/cupy (git-ignored), so a rerun skips
# compilation. Exit status 0 only when every part passed.
set -u -o pipefail
OUT=${OUT:-/tmp/refvae-gpu}
mkdir -p "$OUT" validation/.cache/cupy
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 REFVAE_REQUIRE_CUPY=1
export CUPY_CACHE_DIR="$PWD/validation/.cache/cupy"
status=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" \
        || { echo "gpu_check: $name FAILED"; status=1; }
}

python3 - <<'PY' 2>&1 | tee "$OUT/device.log" || exit 1
import cupy, torch
from refvae.backend import get_backend
get_backend("cupy")  # one kernel, one product, one copy back; a one-line error otherwise
print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount(),
      cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
PY

part correctness 90 python3 -m validation.gpu_check correctness
part oracle 45 python3 -m validation.gpu_check oracle
part train 45 python3 -m validation.gpu_check train
part syncs 45 python3 -m validation.gpu_check syncs

part pytest_cupy 90 python3 -m pytest -q -p no:cacheprovider -k "cupy and not strict" \
    --junitxml="$OUT/pytest_cupy.xml" tests/test_backend.py tests/test_fast_kernels.py \
    tests/test_fast_optim.py tests/test_fast_step.py tests/test_mlp.py tests/test_vae.py
python3 - "$OUT/pytest_cupy.xml" <<'PY' 2>&1 | tee -a "$OUT/pytest_cupy.log" || status=1
import sys, xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if "[cupy" in c.get("name", "")]
passed = [c for c in cases if not any(ch.tag in ("failure", "error", "skipped") for ch in c)]
print(f"real-CuPy cases: {len(passed)} passed of {len(cases)} collected")
sys.exit(0 if cases and len(passed) == len(cases) else 1)
PY

part bench 90 python3 -m refvae.cli.main bench --backend cupy --arch examples deep --batch 4096 \
    --dtype float32 float64 --steps 20
echo "gpu_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
