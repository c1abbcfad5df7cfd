"""The validation claims' shared plumbing: a FAIL judged with NumPy comparisons must exit 1."""
import numpy as np

from validation.common import Claim, main


def test_numpy_bool_verdict_is_a_python_bool():
    claim = Claim("t", "s", np.True_ & False, "x")
    assert claim.passed is False and claim.status == "FAIL"
    assert Claim("t", "s", np.True_, "x").passed is True
    assert Claim("t", "s", None, "x").status == "SKIP"


def test_main_exits_1_on_a_numpy_false(tmp_path):
    assert main(lambda ctx: Claim("t", "s", np.bool_(False), "x"),
                ["--fig-dir", str(tmp_path)]) == 1
