"""validation/bench_report's parts (issue 28): the profile's categories, the whole-epoch comparison
and the targets' verdicts. What they measure is reported in validation/BENCH.md, never asserted;
these tests check how they measure."""
import pytest

from refvae.cli.bench import step_flops
from validation import bench_epoch, bench_limits, bench_profile, bench_report


@pytest.mark.parametrize("file,function,want", [
    ("/x/refvae/fast/fused_pass.py", "forward", "matrix products"),
    ("/x/refvae/fast/fused_pass.py", "weights", "matrix products"),
    ("/x/refvae/fast/fused_pass.py", "rows", "rest"),
    ("/x/refvae/fast/optim.py", "_adam_numpy", "optimizer"),
    ("/x/refvae/optim/rules.py", "step_sizes", "rest"),
    ("/x/refvae/fast/kernels.py", "_bernoulli_numpy", "elementwise"),
    ("/x/refvae/fast/fused_pass.py", "_head_grads_numpy", "elementwise"),
    ("~", "<method 'reduce' of 'numpy.ufunc' objects>", "elementwise"),
    ("/x/refvae/backend.py", "normal", "noise"),
])
def test_each_function_lands_in_its_category(file, function, want):
    assert bench_profile.category(file, function) == want


def test_the_breakdown_accounts_for_the_whole_one_thread_step():
    r = bench_profile.breakdown("examples", 16, "float64", steps=2)
    parts = [r[c] for c in bench_profile.CATEGORIES]
    assert sum(parts) == pytest.approx(r["one_ms"], rel=1e-9)
    assert r["matrix products"] > 0 and r["elementwise"] > 0 and r["optimizer"] > 0
    assert r["threading"] == pytest.approx(r["two_ms"] - r["one_ms"] / 2)
    assert "matrix products ms" in bench_profile.rows_text([r])


def test_an_epoch_of_each_engine_is_timed_in_alternating_turns(monkeypatch):
    pytest.importorskip("torch")
    calls = []
    for name in ("refvae_epoch", "torch_epoch"):
        real = getattr(bench_epoch, name)

        def wrapped(*a, _real=real, _name=name):
            run = _real(*a)
            return lambda: (calls.append(_name), run())

        monkeypatch.setattr(bench_epoch, name, wrapped)
    monkeypatch.setattr(bench_epoch.time, "sleep", lambda s: None)
    r = bench_epoch.compare("examples", 32, "float64", 1, n_train=64, n_test=8, turns=2)
    assert calls == ["refvae_epoch", "torch_epoch"] * 3      # one untimed epoch each, then turns
    assert r["refvae_s"] > 0 and r["torch_s"] > 0 and r["ratio"] > 0
    assert "PyTorch s" in bench_epoch.rows_text([r])


def test_the_step_table_checks_every_row_and_the_blas_share():
    def case(arch, batch, dtype, ratio, gflops):
        return {"arch": arch, "batch": batch, "dtype": dtype, "refvae_ms": 1.0, "peer_ms": 1.0,
                "ratio": ratio, "samples_per_s": 1.0, "peak_mb": 1.0, "gflops": gflops,
                "blas_gflops": 100.0}
    rounds = [[case("examples", 128, "float32", 0.7, 60.0),
               case("examples", 1024, "float64", 0.85, 10.0)]]
    text, verdicts = bench_report.step_table(rounds, 2)
    assert verdicts == [True, True, False]
    assert "≥ 50% BLAS — met" in text and "≤ 0.8× — NOT met" in text
    _, one = bench_report.step_table(rounds, 1)
    assert one == [True, True]


@pytest.mark.parametrize("arch", sorted(bench_limits.ARCHITECTURES))
@pytest.mark.parametrize("batch", [1, 128])
def test_the_limits_time_every_matrix_product_of_the_step(arch, batch):
    """The products' FLOPs are those of refvae bench's independent count: none left out."""
    config = bench_limits.ARCHITECTURES[arch]
    flops = sum(2.0 * m * k * n for _, m, k, n in bench_limits.products(config, batch))
    assert flops == step_flops(config, batch)


def test_the_limits_measure_both_engines_and_the_floor_uses_the_peers_step():
    pytest.importorskip("torch")
    r = bench_limits.products_ms("examples", 8, "float64", 1, repeats=1)
    assert r["numpy_ms"] > 0 and r["torch_ms"] > 0
    text = bench_limits.products_text([r], {("examples", 8, "float64", 1): 2 * r["numpy_ms"]})
    assert "| 0.50× |" in text
    assert "| n/a |" in bench_limits.products_text([r])
    rows = bench_limits.transcendentals("float32", values=64, repeats=1)
    assert [x["function"] for x in rows] == ["exp", "log"]
    assert all(x["numpy_ns"] > 0 and x["torch_ns"] > 0 for x in rows)


def test_the_concurrency_runs_alone_on_threads_and_in_processes():
    r = bench_limits.concurrency("float64", calls=20, turns=2)
    assert r["alone_s"] > 0 and 0 < r["threads"][1] <= r["threads"][0] <= r["threads"][2]
    assert r["processes"] is None or r["processes"][1] > 0
    assert "two processes slowdown" in bench_limits.others_text([], [r])
