"""Data loaders on small synthetic files, corrupt inputs, binarization, support checks, download."""
import gzip
import hashlib
import socket
import struct
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import refvae.data.load as rdata
from refvae.backend import NoiseSource
from refvae.util.gates import check_support
from refvae.data.load import (CHECKSUMS, Dataset, apply_binarization, binarize, download,
                              load_dataset)
from refvae.data.formats import (load_binarized_mnist_dir, load_frey_face, load_idx_dir,
                                 load_idx_images, load_npz_dataset, read_amat, read_idx)
from refvae.errors import ConfigError, DataError, ShapeError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _one_line(e):
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def _idx_bytes(a, code=0x08):
    a = np.asarray(a)
    dt = {0x08: ">u1", 0x0D: ">f4", 0x0C: ">i4"}[code]
    return bytes([0, 0, code, a.ndim]) + struct.pack(">" + "I" * a.ndim,
                                                     *a.shape) + a.astype(dt).tobytes()


def _write_idx(path, a, gz=True, code=0x08):
    data = _idx_bytes(a, code)
    Path(path).write_bytes(gzip.compress(data) if gz else data)
    return Path(path)


def _images(n, rows=4, cols=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, rows, cols), dtype=np.uint8)


def _mnist_dir(d, gz=True, n_train=5, n_test=3):
    d.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    tr, te = _images(n_train, seed=1), _images(n_test, seed=2)
    _write_idx(d / f"train-images-idx3-ubyte{sfx}", tr, gz)
    _write_idx(d / f"t10k-images-idx3-ubyte{sfx}", te, gz)
    _write_idx(d / f"train-labels-idx1-ubyte{sfx}", np.arange(n_train) % 10, gz)
    _write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", np.arange(n_test) % 10, gz)
    return tr, te


# ----- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_read_idx(tmp_path, gz):
    imgs = _images(6)
    np.testing.assert_array_equal(read_idx(_write_idx(tmp_path / "i", imgs, gz)), imgs)
    labels = np.arange(7) % 10
    np.testing.assert_array_equal(read_idx(_write_idx(tmp_path / "l", labels, gz)), labels)
    f = np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32)
    got = read_idx(_write_idx(tmp_path / "f", f, gz, code=0x0D))
    np.testing.assert_array_equal(got, f)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_idx_dir(tmp_path, gz):
    tr, te = _mnist_dir(tmp_path / "m", gz)
    ds = load_idx_dir(tmp_path / "m")
    assert ds.train.shape == (5, 12) and ds.test.shape == (3, 12) and ds.train.dtype == np.float64
    assert ds.image_shape == (4, 3) and ds.kind == "greyscale"
    np.testing.assert_array_equal(ds.train, tr.reshape(5, 12) / 255.0)
    np.testing.assert_array_equal(ds.test[2].reshape(4, 3), te[2] / 255.0)
    # Path detection: the directory or any of its IDX files; by name from data_dir/<name>.
    assert load_dataset(tmp_path / "m").n_train == 5
    assert load_dataset(tmp_path / "m"
                        / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).n_test == 3
    (tmp_path / "m").rename(tmp_path / "mnist")
    ds2 = load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert ds2.name == "mnist" and ds2.n_train == 5
    np.testing.assert_array_equal(load_dataset(ds2.source).test, ds2.test)  # source reloads


def test_fashion_mnist_by_name(tmp_path):
    _mnist_dir(tmp_path / "fashion_mnist")
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.name == "fashion-mnist" and ds.n_test == 3


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b"\x01" + b[1:], "not an IDX file"),
    (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
    (lambda b: b[:3], "not an IDX file"),
    (lambda b: b"", "not an IDX file"),
    (lambda b: b[:10], "truncated inside its IDX header"),
    (lambda b: b[:-5], "data bytes but its header"),
    (lambda b: b + b"\0", "data bytes but its header"),
])
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_corrupt_idx(tmp_path, mutate, match, gz):
    data = mutate(_idx_bytes(_images(4)))
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=match) as e:
        read_idx(p)
    assert str(p) in _one_line(e)


def test_corrupt_gzip_and_wrong_file_kind(tmp_path):
    good = gzip.compress(_idx_bytes(_images(50)))
    p = tmp_path / "t.gz"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as e:
        read_idx(p)
    _one_line(e)
    p.write_bytes(good[:10] + np.random.default_rng(0).bytes(len(good) - 10))
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(p)
    with pytest.raises(DataError, match="not an IDX image file"):
        load_idx_images(_write_idx(tmp_path / "labels", np.arange(10)))
    with pytest.raises(DataError, match="not an IDX image file"):
        load_idx_images(_write_idx(tmp_path / "f", np.zeros((2, 3, 3)), code=0x0D))
    d = tmp_path / "half"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte.gz", _images(3))
    with pytest.raises(DataError, match="lacks t10k-images-idx3-ubyte.gz"):
        load_idx_dir(d)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", _images(3, rows=5))
    with pytest.raises(DataError, match="same data set"):
        load_idx_dir(d)


def test_named_mnist_missing_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", data_dir=tmp_path / "nothing", cache_dir=tmp_path / "cache")
    msg = _one_line(e)
    assert "download=True" in msg and "train-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "cache" / "mnist") in msg
    with pytest.raises(DataError, match="place binarized_mnist_train.amat") as e:
        load_dataset("binarized-mnist", data_dir=tmp_path)
    _one_line(e)
    with pytest.raises(DataError, match="place frey_rawface.mat"):
        load_dataset("frey-face", data_dir=tmp_path)
    with pytest.raises(DataError, match="neither a built-in name"):
        load_dataset("no-such-set")


# ----- binarized MNIST, Frey Face -----------------------------------------------------------------
def _bin_mnist_dir(d, text=False, valid=True):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    out = {}
    for split, n in (("train", 7), ("valid", 3), ("test", 4)):
        if split == "valid" and not valid:
            continue
        X = (rng.random((n, 16)) < 0.3).astype(np.uint8)
        p = d / f"binarized_mnist_{split}.amat"
        if text:
            np.savetxt(p, X, fmt="%d")
        else:
            scipy.io.savemat(p, {"X": X})
        out[split] = X
    return out


@pytest.mark.parametrize("text", [False, True], ids=["matlab", "text"])
def test_binarized_mnist(tmp_path, text):
    X = _bin_mnist_dir(tmp_path / "binarized_mnist", text=text)
    ds = load_dataset("binarized-mnist", data_dir=tmp_path)
    assert ds.kind == "binary" and ds.image_shape == (4, 4)
    np.testing.assert_array_equal(ds.train, X["train"])
    np.testing.assert_array_equal(ds.valid, X["valid"])
    np.testing.assert_array_equal(ds.test, X["test"])
    assert load_dataset(tmp_path / "binarized_mnist" / "binarized_mnist_test.amat").n_train == 7
    np.testing.assert_array_equal(load_dataset(ds.source).valid, ds.valid)


def test_binarized_mnist_without_valid_and_errors(tmp_path):
    _bin_mnist_dir(tmp_path / "b", valid=False)
    assert load_binarized_mnist_dir(tmp_path / "b").valid is None
    p = tmp_path / "b" / "binarized_mnist_train.amat"
    scipy.io.savemat(p, {"Y": np.zeros((2, 2))})
    with pytest.raises(DataError, match="no variable 'X' \\(found Y\\)") as e:
        read_amat(p)
    _one_line(e)
    p.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(DataError, match="not a readable MATLAB file") as e:
        read_amat(p)
    _one_line(e)
    p.write_text("0 1 0\n1 1\n")
    with pytest.raises(DataError, match="malformed text .amat"):
        read_amat(p)
    (tmp_path / "b" / "binarized_mnist_test.amat").unlink()
    with pytest.raises(DataError, match="lacks binarized_mnist_test.amat"):
        load_binarized_mnist_dir(tmp_path / "b")


def test_frey_face(tmp_path):
    ff = np.random.default_rng(4).integers(0, 256, size=(560, 30), dtype=np.uint8)
    (tmp_path / "frey_face").mkdir()
    p = tmp_path / "frey_face" / "frey_rawface.mat"
    scipy.io.savemat(p, {"ff": ff})
    ds = load_dataset("frey-face", data_dir=tmp_path)
    assert ds.image_shape == (28, 20) and ds.kind == "greyscale"
    assert ds.n_train == 27 and ds.n_test == 3
    np.testing.assert_array_equal(ds.train[5].reshape(28, 20), ff[:, 5].reshape(28, 20) / 255.0)
    np.testing.assert_array_equal(ds.test[-1], ff[:, -1] / 255.0)
    # Deterministic, and the split follows test_fraction.
    np.testing.assert_array_equal(load_frey_face(p).train, ds.train)
    assert load_frey_face(p, test_fraction=0.5).n_test == 15
    assert load_dataset(p).n_train == 27 and load_dataset(tmp_path / "frey_face").n_test == 3
    np.testing.assert_array_equal(load_dataset(ds.source).test, ds.test)
    scipy.io.savemat(p, {"ff": ff[:500]})
    with pytest.raises(DataError, match=r"shape \(500, 30\), expected \(560, n\)") as e:
        load_frey_face(p)
    _one_line(e)
    scipy.io.savemat(p, {"faces": ff})
    with pytest.raises(DataError, match="no variable 'ff'"):
        load_frey_face(p)


# ----- npz -------------------------------------------------------------------------------------
def test_npz_variants(tmp_path):
    rng = np.random.default_rng(5)
    tr, te = rng.standard_normal((20, 6)), rng.standard_normal((5, 6))
    np.savez(tmp_path / "both.npz", train=tr, test=te)
    ds = load_dataset(tmp_path / "both.npz")
    assert ds.name == "both" and ds.kind == "real" and ds.image_shape is None
    np.testing.assert_array_equal(ds.train, tr)
    np.testing.assert_array_equal(ds.test, te)
    np.testing.assert_array_equal(load_dataset(ds.source).train, tr)
    # train only: the last 10 % is the test split.
    np.savez(tmp_path / "train_only.npz", train=tr)
    ds = load_npz_dataset(tmp_path / "train_only.npz")
    assert ds.n_train == 18 and ds.n_test == 2
    np.testing.assert_array_equal(ds.test, tr[-2:])
    # single y, greyscale images (n, rows, cols) flattened, with a valid split and image_shape.
    y = rng.random((10, 3, 2))
    np.savez(tmp_path / "y.npz", y=y)
    ds = load_npz_dataset(tmp_path / "y.npz", test_fraction=0.3)
    assert ds.kind == "greyscale" and ds.image_shape == (3, 2) and ds.n_test == 3
    np.testing.assert_array_equal(ds.train[0], y[0].ravel())
    b = (rng.random((8, 4)) < 0.5).astype(np.uint8)
    np.savez(tmp_path / "bin.npz", train=b, valid=b[:2], test=b[:3], image_shape=np.array([2, 2]))
    ds = load_npz_dataset(tmp_path / "bin.npz")
    assert ds.kind == "binary" and ds.image_shape == (2, 2) and ds.valid.shape == (2, 4)
    np.save(tmp_path / "arr.npy", tr)
    assert load_dataset(tmp_path / "arr.npy").n_test == 2
    # A directory holding exactly one .npz is detected.
    (tmp_path / "one").mkdir()
    np.savez(tmp_path / "one" / "d.npz", train=tr, test=te)
    assert load_dataset("one", data_dir=tmp_path).n_test == 5


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((3, 2))}, "expected 'train'"),
    ({"train": np.zeros((3, 2)), "y": np.zeros((3, 2))}, "expected 'train'"),
    ({"train": np.zeros(5)}, "one datum per row"),
    ({"train": np.zeros((3, 2)), "test": np.zeros((2, 3))}, None),
    ({"train": np.array([[0.0, np.nan]] * 3), "test": np.zeros((1, 2))},
     "3 non-finite values .*row 0, column 1"),
    ({"train": np.zeros((1, 2))}, "too few to split"),
    ({"train": np.array([["a", "b"]] * 2)}, "give numeric data"),
])
def test_npz_errors(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    if match is None:
        with pytest.raises(ShapeError, match="same width"):
            load_dataset(p)
        return
    with pytest.raises(DataError, match=match) as e:
        load_dataset(p)
    _one_line(e)


def test_npz_pickled_and_corrupt(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, train=np.array([[{}], [1]], dtype=object))
    with pytest.raises(DataError, match="pickled object array 'train'"):
        load_dataset(p)
    p.write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(100))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(p)
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="no known data set"):
        load_dataset(tmp_path / "e")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unrecognised data file"):
        load_dataset(tmp_path / "notes.txt")


def test_dataset_validation():
    with pytest.raises(ShapeError, match="same width"):
        Dataset("x", np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ShapeError, match="image_shape"):
        Dataset("x", np.zeros((2, 4)), np.zeros((2, 4)), image_shape=(3, 3))
    with pytest.raises(ConfigError, match="unknown data kind"):
        Dataset("x", np.zeros((2, 4)), np.zeros((2, 4)), kind="colour")
    ds = Dataset("x", np.zeros((2, 4), dtype=np.uint8), [[1, 2, 3, 4]], (2, 2))
    assert ds.train.dtype == np.float64 and ds.test.shape == (1, 4) and ds.dim == 4


# ----- the built-in default ----------------------------------------------------------------------
def test_digits_default():
    pytest.importorskip("sklearn")
    ds = load_dataset()
    assert ds.name == "digits" and ds.image_shape == (8, 8) and ds.kind == "greyscale"
    assert ds.train.shape == (1500, 64) and ds.test.shape == (297, 64)
    assert ds.train.min() == 0.0 and ds.train.max() == 1.0 and ds.train.dtype == np.float64
    np.testing.assert_array_equal(load_dataset("digits").test, ds.test)
    assert ds.source == "digits"
    from sklearn.datasets import load_digits
    np.testing.assert_array_equal(ds.test[-1], load_digits().data[-1] / 16.0)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"pip install 'refvae\[train\]'") as e:
        load_dataset(None)
    _one_line(e)


# ----- support checks and binarization ---------------------------------------------------------
def test_check_support():
    y = np.full((4, 5), 0.5)
    check_support(y, "bernoulli")
    check_support(y - 3.0, "gaussian")
    check_support(y * 100, "gaussian_diag")
    bad = y.copy()
    bad[1, 3], bad[2, 0], bad[3, 4] = 1.5, -0.1, 7.0
    with pytest.raises(DataError, match=r"3 values lie outside, first at row 1, column 3 \(value "
                                        r"1.5\)") as e:
        check_support(bad, "bernoulli", "train split")
    assert "train split" in _one_line(e)
    check_support(bad, "gaussian")
    nan = y.copy()
    nan[2, 1], nan[3, 3] = np.nan, -np.inf
    for emission in ("bernoulli", "gaussian", "gaussian_diag"):
        with pytest.raises(DataError, match="2 non-finite values .*first at row 2, column 1") as e:
            check_support(nan, emission)
        _one_line(e)
    with pytest.raises(DataError, match="empty"):
        check_support(np.zeros((0, 5)), "gaussian")
    with pytest.raises(ShapeError, match="2-D"):
        check_support(np.zeros(5), "gaussian")
    with pytest.raises(ConfigError, match="unknown emission"):
        check_support(y, "poisson")
    check_support([[0.0, 1.0]], "bernoulli")


def test_binarize():
    # not a NoiseSource seed below (same stream would give u == p)
    rng = np.random.default_rng(1234)
    p = rng.random((400, 100))
    p[0, :5] = 0.0
    p[1, :5] = 1.0
    a = binarize(p, NoiseSource(7))
    assert a.dtype == np.float64 and set(np.unique(a)) <= {0.0, 1.0}
    assert np.all(a[0, :5] == 0) and np.all(a[1, :5] == 1)
    np.testing.assert_array_equal(a, binarize(p, NoiseSource(7)))  # static: a seed fixes it
    noise = NoiseSource(8)
    e1, e2 = binarize(p, noise), binarize(p, noise)                 # dynamic: redrawn each call
    assert not np.array_equal(e1, e2)
    assert abs((e1 - p).mean()) < 0.01  # 5 standard errors
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        binarize(p * 2, noise)


def test_apply_binarization():
    rng = np.random.default_rng(9)
    ds = Dataset("g", rng.random((30, 4)), rng.random((10, 4)), (2, 2), "greyscale",
                 valid=rng.random((5, 4)))
    assert apply_binarization(ds, "none") is ds
    assert apply_binarization(ds, "dynamic") is ds
    s1, s2 = apply_binarization(ds, "static", seed=3), apply_binarization(ds, "static", seed=3)
    assert s1.kind == "binary" and s1.image_shape == (2, 2) and s1.valid.shape == (5, 4)
    for a, b in ((s1.train, s2.train), (s1.test, s2.test), (s1.valid, s2.valid)):
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(a)) <= {0.0, 1.0}
    assert not np.array_equal(apply_binarization(ds, "static", seed=4).train, s1.train)
    assert ds.kind == "greyscale"  # the input is not modified
    with pytest.raises(ConfigError, match="unknown binarization"):
        apply_binarization(ds, "otsu")
    real = Dataset("r", rng.standard_normal((5, 4)), rng.standard_normal((2, 4)))
    with pytest.raises(DataError, match="r train split"):
        apply_binarization(real, "dynamic")
    with pytest.raises(DataError):
        apply_binarization(real, "static")


def test_load_dataset_static_binarization(tmp_path):
    np.savez(tmp_path / "g.npz", train=np.full((10, 3), 0.5), test=np.full((2, 3), 0.5))
    ds = load_dataset(tmp_path / "g.npz", binarization="static", seed=1)
    assert ds.kind == "binary" and set(np.unique(ds.train)) == {0.0, 1.0}


# ----- download against a local HTTP server ------------------------------------------------------
@pytest.fixture
def http_root(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/files/", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _md5(b):
    return hashlib.md5(b).hexdigest()


def _serve_fake_mnist(root):
    (root / "files").mkdir()
    _mnist_dir(root / "files")
    table = {}
    for f in rdata.IDX_FILES:
        data = (root / "files" / f).read_bytes()
        table[f] = (_md5(data),)
    # One file listed by the md5 of its uncompressed content only (a recompressed copy).
    raw = gzip.decompress((root / "files" / "train-images-idx3-ubyte.gz").read_bytes())
    table["train-images-idx3-ubyte.gz"] = ("0" * 32, _md5(raw))
    return table


def test_download_once_into_cache(http_root, tmp_path, monkeypatch):
    root, url, hits = http_root
    table = _serve_fake_mnist(root)
    cache = tmp_path / "cache"
    target = download("mnist", cache, base_url=url, timeout=5, checksums=table)
    assert target == cache / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(rdata.IDX_FILES)  # no temp files
    assert len(hits) == 4
    download("mnist", cache, base_url=url, timeout=5, checksums=table)
    assert len(hits) == 4  # cached: nothing fetched again
    # load_dataset finds the cache; with download=True it fetches first.
    monkeypatch.setitem(CHECKSUMS, "fashion-mnist", table)
    ds = load_dataset("fashion-mnist", cache_dir=cache, download=True, base_url=url)
    assert ds.name == "fashion-mnist" and ds.n_train == 5 and len(hits) == 8
    assert load_dataset("mnist", cache_dir=cache).n_test == 3
    # A cached file that went bad is fetched again.
    (target / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    download("mnist", cache, base_url=url, timeout=5, checksums=table)
    assert hits[-1].endswith("t10k-images-idx3-ubyte.gz") and len(hits) == 9


def test_download_checksum_mismatch(http_root, tmp_path):
    root, url, _ = http_root
    table = _serve_fake_mnist(root)
    table["t10k-labels-idx1-ubyte.gz"] = ("f" * 32,)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch") as e:
        download("mnist", cache, base_url=url, timeout=5, checksums=table)
    msg = _one_line(e)
    assert f"place them in {cache / 'mnist'}" in msg and ("download t10k-labels-idx1-ubyte.gz by "
                                                          "hand") in msg
    assert not (cache / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((cache / "mnist").glob(".*"))  # temp files removed


def test_download_network_failure_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        download("mnist", cache, base_url=f"http://127.0.0.1:{port}/", timeout=5)
    msg = _one_line(e)
    assert "could not download mnist" in msg
    assert f"place them in {cache / 'mnist'}" in msg
    assert all(f in msg for f in rdata.IDX_FILES)
    with pytest.raises(ConfigError, match="cannot download 'cifar'"):
        download("cifar", cache)


def test_download_404(http_root, tmp_path):
    root, url, _ = http_root
    (root / "files").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: HTTP 404"):
        download("fashion-mnist", tmp_path / "c", base_url=url, timeout=5)


# ----- real data, when this checkout sits next to the shared data folder ------------------------
@pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="shared MNIST copy absent")
def test_shared_mnist_test_split_and_checksums():
    y, shape = load_idx_images(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert y.shape == (10000, 784) and shape == (28, 28)
    assert y.min() == 0.0 and y.max() == 1.0
    assert 0.12 < y.mean() < 0.14
    for f in rdata.IDX_FILES:  # the table accepts the recompressed training images
        assert rdata._md5_matches(SHARED / "mnist" / f, CHECKSUMS["mnist"][f]) is None, f


@pytest.mark.skipif(not (SHARED / "binarized_mnist" / "binarized_mnist_test.amat").is_file(),
                    reason="shared binarized MNIST copy absent")
def test_shared_binarized_mnist_test_split():
    X = read_amat(SHARED / "binarized_mnist" / "binarized_mnist_test.amat")
    assert X.shape == (10000, 784) and set(np.unique(X)) == {0.0, 1.0}
    check_support(X, "bernoulli")


@pytest.mark.skipif(not (SHARED / "frey_face" / "frey_rawface.mat").is_file(),
                    reason="shared Frey Face copy absent")
def test_shared_frey_face():
    ds = load_dataset("frey-face", data_dir=SHARED)
    assert ds.n_train + ds.n_test == 1965 and ds.dim == 560 and ds.image_shape == (28, 20)
    assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0
