#!/usr/bin/env bash
# The GPU check of issue 8 as one short script, for a machine with an NVIDIA GPU where python3 has
# CuPy and CUDA PyTorch (the project's device image has both, and pytest, hypothesis and SciPy).
# Run from the repository root; it needs no install (PYTHONPATH) and no network:
#
#     bash validation/gpu_check.sh            # about 5 minutes; logs in $OUT (or /tmp/refvae-gpu)
#
# 1. every test case that runs on the CuPy backend (the `bk` fixture's cupy cases and the others
#    whose id names cupy; they skip on a machine without a GPU);
# 2. `refvae bench --backend cupy` at batch 4096 against PyTorch CUDA (target: refvae's throughput
#    at least 0.9× PyTorch's, i.e. a step-time ratio of at most 1.11×).
set -u -o pipefail
OUT=${OUT:-/tmp/refvae-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

python3 - <<'EOF' 2>&1 | tee "$OUT/device.log" || exit 1
import cupy, torch
print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount(),
      cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
EOF

timeout 240 python3 -m pytest -q -p no:cacheprovider -k cupy tests 2>&1 | tee "$OUT/pytest_cupy.log" || status=1
timeout 240 python3 -m refvae.cli bench --backend cupy --arch examples deep --batch 4096 \
    --dtype float32 float64 --steps 40 2>&1 | tee "$OUT/bench_cupy.log" || status=1
exit $status
