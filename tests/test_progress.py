"""Progress output: the terminal bar (rate, elapsed, ETA), plain lines when not a terminal, the
download's progress through `refvae train --download` and `refvae data download`, and
`evaluate --iwae`."""
import io
import json
import os

import numpy as np

import refvae.data.load as rdata
from refvae.cli.main import main
from refvae.util.progress import Meter, clock, status
from test_data import _serve_fake_mnist, http_root  # noqa: F401 - http_root is a fixture


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_clock_and_status():
    assert clock(0) == "0:00" and clock(75.9) == "1:15" and clock(3725) == "1:02:05"
    assert status(25, 100, 5.0, "steps") == "25/100 (25%) 5.0 steps/s elapsed 0:05 eta 0:15"


def test_terminal_bar_is_redrawn_in_place(monkeypatch):
    monkeypatch.setattr("refvae.util.progress.REDRAW_S", 0.0)
    out = Terminal()
    meter = Meter("epoch 1/3", 4, stream=out)
    for _ in range(4):
        meter.advance(1, "loss 1.5")
    meter.line("epoch 1/3 done")
    text = out.getvalue()
    draws = text.split("\r")[1:]
    assert (len(draws) == 5 and draws[-1] == "epoch 1/3 done\033[K\n" and "\n"
            not in "".join(draws[:-1]))
    assert draws[3].startswith("epoch 1/3 [" + "#" * 20 + "] 4/4 (100%)") and "eta" in draws[3]
    assert "loss 1.5" in draws[0]


def test_plain_lines_every_log_interval_and_silence():
    out = io.StringIO()
    meter = Meter("job", 10, stream=out, log_interval=4)
    for _ in range(10):
        meter.advance()
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["4/10", "8/10"]
    quiet = io.StringIO()
    silent = Meter("job", 10, enabled=False, stream=quiet, log_interval=1)
    silent.advance()
    silent.line("x")
    assert quiet.getvalue() == ""


def test_train_download_and_data_download(http_root, tmp_path, monkeypatch, capsys):  # noqa: F811
    root, url, hits = http_root
    table = _serve_fake_mnist(root)
    monkeypatch.setitem(rdata.CHECKSUMS, "mnist", table)
    monkeypatch.setitem(rdata.MIRRORS, "mnist", (url,))
    monkeypatch.setenv("REFVAE_CACHE_DIR", str(tmp_path / "cache"))
    args = ["train", "--data", "mnist", "--epochs", "1", "--no-figures", "--out",
            str(tmp_path / "run")]
    assert main(args) == 2
    assert "--download" in capsys.readouterr().err and not hits
    assert main(args + ["--download"]) == 0
    err = capsys.readouterr().err
    assert len(hits) == 4 and err.count("downloaded http://") == 4
    assert main(["data", "download", "mnist", "--cache-dir", str(tmp_path / "other")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "other" / "mnist") and len(hits) == 8
    # Downloaded files get the umask's mode like every other file refvae writes (the test
    # process's umask, whatever it is).
    mask = os.umask(0o022)
    os.umask(mask)
    mode = 0o666 & ~mask
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "other" / "mnist").iterdir()} == {mode}


def test_evaluate_iwae_reports_progress(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", train=rng.random((20, 6)), test=rng.random((30, 6)))
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--latent-dim", "2",
                 "--encoder-hidden", "3", "--decoder-hidden", "3", "--quiet", "--no-figures",
                 "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--iwae", "3", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "iwae k=3: 30 rows done" in err and json.loads(out)["n"] == 30
    assert main(["evaluate", str(tmp_path / "run"), "--iwae", "3", "--json", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_a_line_whenever_a_multiple_is_crossed():
    out = io.StringIO()
    meter = Meter("rows", 100, stream=out, log_interval=10)
    for step in (7, 7, 7, 30, 49):
        meter.advance(step)
    assert ([line.split()[1] for line in out.getvalue().splitlines()]
            == ["14/100", "21/100", "51/100", "100/100"])
