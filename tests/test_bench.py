"""``refvae bench``: the timing protocol, the FLOP count, the table rows and the peer handling
(what it measures is reported, never asserted: these tests check how it measures)."""
import io

import pytest

from refvae.cli import bench
from refvae.cli.main import main


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)


def test_engines_take_alternating_turns_after_their_warmup():
    calls = []
    engines = [(lambda: calls.append("a"), lambda: None), (lambda: calls.append("b"), lambda: None)]
    medians = bench.time_interleaved(engines, steps=4, warmup=2, turns=2)
    # warm-up a a, b b; then per turn: one untimed step + 2 timed steps, a then b.
    assert "".join(calls) == "aabb" + "aaabbb" * 2
    assert len(medians) == 2 and all(m >= 0 for m in medians)


def test_step_flops_counts_every_product():
    cfg = {"data_dim": 10, "latent_dim": 2, "encoder_hidden": [5], "decoder_hidden": [3]}
    n = 7
    # encoder: 10→5 (forward + weight grad only), 5→4 (heads: forward, weight and input grads);
    # decoder: 2→3 and 3→10 (forward, weight and input grads).
    expected = 2 * n * (2 * 10 * 5 + 3 * 5 * 4 + 3 * 2 * 3 + 3 * 3 * 10)
    assert bench.step_flops(cfg, n) == expected


def test_a_row_per_case_with_the_peer_beside_it():
    pytest.importorskip("torch")
    out = io.StringIO()
    rows = bench.run_bench(["examples"], [16], ["float32"], steps=2, warmup=1, threads=2, out=out)
    (row,) = rows
    assert row["threads"] == 2 and row["refvae_ms"] > 0 and row["peer_ms"] > 0
    assert row["ratio"] == pytest.approx(row["refvae_ms"] / row["peer_ms"])
    assert row["peak_mb"] > 0 and "ratio" in out.getvalue()


def test_without_a_peer_the_ratio_column_says_why(tmp_path):
    rows = bench.run_bench(["examples"], [8], ["float64"], steps=1, warmup=1, threads=1,
                           peer=tmp_path / "absent.py", out=io.StringIO())
    assert rows[0]["peer_ms"] is None and "no peer file" in rows[0]["ratio"]
    assert "n/a (no peer file" in bench.format_row(rows[0])


@pytest.mark.parametrize("bad", ["0", "-2", "x"])
def test_bad_thread_count_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--threads", bad])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_too_few_steps_are_warned_about(tmp_path, capsys):
    """Once, and only where there is a ratio (tests/test_newcomer.py runs the command)."""
    assert bench.few_steps_warning(bench.STABLE_STEPS, bench.STABLE_WARMUP) is None
    assert "unstable" in bench.few_steps_warning(1, 1)


def test_the_estimators_of_one_latent_dimension_take_alternating_turns(monkeypatch):
    """Their ratios to pathwise come from one interleaved timing, not from runs minutes apart."""
    timed = []
    real = bench.time_interleaved

    def spy(engines, steps, warmup, turns=bench.TURNS):
        timed.append(len(engines))
        return real(engines, steps, warmup, turns)

    monkeypatch.setattr(bench, "time_interleaved", spy)
    rows = bench.run_estimators(latent_dims=(2,), batch=4, steps=1, warmup=0, out=io.StringIO())
    assert timed == [4]
    assert [r["estimator"] for r in rows] == ["pathwise", "price", "score-loo", "gumbel-softmax"]
    assert rows[0]["vs_pathwise"] == 1.0
    assert all(r["vs_pathwise"] == pytest.approx(r["ms"] / rows[0]["ms"]) for r in rows)
