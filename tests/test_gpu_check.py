"""validation/gpu_check.sh: syntax-checked, and its correctness part run on the strict CuPy stand-in
(the same code that compares CuPy float64 with NumPy float64 on a GPU)."""
import shutil
import subprocess
from pathlib import Path

import pytest

from validation import gpu_check

SCRIPT = Path(__file__).resolve().parents[1] / "validation" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_correctness_part_passes_on_the_stand_in(strict_cupy_bk):
    lines = []
    assert gpu_check.correctness(lines.append) == 0
    assert lines[-1].startswith("correctness: ") and not any(l.startswith("FAIL") for l in lines)
    # fused: the gaussian latent's pathwise estimator × 3 emissions × 4 activations
    assert sum("(fused)" in l for l in lines) == 3 * 4
    assert len(lines) > 100
