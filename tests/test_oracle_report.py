"""The numbers a report prints say what they mean (issue 25, point 6): a relative error only where
the reference is not 0 (the absolute error apart where it is), the error in units of the
tolerance its row was judged by (≤ 1 passes, float32 rows at float32's tolerance), and
``check_unbiased``'s resolution over the entries that vary."""
import numpy as np
import pytest

from refvae import NoiseSource, oracle
from refvae.gradcheck import compare_arrays, table_lines
from refvae.math.vae import VAE

CONFIG = dict(data_dim=6, latent_dim=2, encoder_hidden=[4], decoder_hidden=[4],
              activation="tanh", emission="bernoulli")


def test_relative_error_is_not_divided_by_a_zero_reference():
    c = compare_arrays("g", np.array([1e-20, 2.0]), np.array([0.0, 2.0 + 1e-9]), 1e-7, 1e-12)
    assert c.passed and c.max_rel == pytest.approx(0.5e-9)       # 1e-9 / 2, not 1e-20 / 1e-300
    assert c.abs_at_zero == 1e-20
    row = table_lines([c])[1]
    assert "e+" not in row and "where the reference is 0" in row


def test_error_per_tolerance_is_at_most_one_exactly_when_a_row_passes():
    for analytic, passes in ((2.0 + 5e-8, True), (2.0 + 5e-6, False)):
        c = compare_arrays("g", np.array([analytic]), np.array([2.0]), 1e-7, 0.0)
        assert c.passed is passes and (c.of_tol <= 1.0) is passes
        assert c.of_tol == pytest.approx(abs(analytic - 2.0) / 2e-7, rel=1e-6)


def test_a_passing_float32_report_shows_errors_within_its_tolerance():
    """refvae's own float32 numbers against its float64 ones: judged at float32's tolerance,
    every row's err/tol is ≤ 1 even where entrywise relative errors are large."""
    vae = VAE(CONFIG)
    params = {k: np.asarray(v) for k, v in vae.init_params(0).items()}
    batch = {"y": (np.arange(24).reshape(4, 6) % 3 == 0).astype(float),
             "eps": np.asarray(vae.draw_noise(NoiseSource(1), 4))}
    theirs = {k: v.astype(np.float32) for k, v in oracle.compute(CONFIG, params, batch)
              .arrays().items()}
    report = oracle.check(CONFIG, params, batch, theirs)
    assert report.passed, str(report)
    assert all(c.of_tol <= 1.0 for c in report.checks)
    assert " ok" in str(report) and "FAIL" not in str(report)


def test_unbiased_resolution_leaves_out_entries_that_never_vary():
    row = oracle.unbiased.UnbiasedRow("grad/w", (3,), np.zeros(3), 1.0,
                                      np.array([1e-9, 0.2, 0.4]), True,
                                      np.array([False, True, True]))
    assert row.resolution == pytest.approx(0.3)                  # not the 0.2 of all three
    assert oracle.unbiased.UnbiasedRow("grad/w", (1,), np.zeros(1), 1.0, np.array([1e-9]),
                                       True, np.array([False])).resolution == 0.0
