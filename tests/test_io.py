"""Atomic JSON / .npz writes and checked reads: every failure is a one-line CheckpointError."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import refvae.util.files as rio
from refvae.errors import CheckpointError
from refvae.util.files import (atomic_write_npz, atomic_write_text, ensure_writable_dir, load_json,
                               load_npz_checked, save_json)


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def _arrays():
    rng = np.random.default_rng(0)
    return {"encoder.0.weight": rng.standard_normal((4, 3)), "encoder.0.bias": np.arange(4.0),
            "grad/decoder.out.bias": np.float32([1.5, -2.0]), "step": np.array(7),
            "mask": np.array([True, False]), "file": np.zeros(2)}


# ----- JSON ------------------------------------------------------------------------------------
def test_json_round_trip(tmp_path):
    cfg = {"format": 1, "data_dim": 784, "encoder_hidden": [400], "activation": "relu",
           "alpha": 1.0, "learn_alpha": False, "note": None, "ünï": "ok"}
    p = save_json(tmp_path / "config.json", cfg)
    assert load_json(p) == cfg
    assert list(load_json(p)) == list(cfg)  # key order kept
    assert p.read_text().endswith("\n")
    assert [f.name for f in tmp_path.iterdir()] == ["config.json"]  # no temp left behind


def test_atomic_write_text(tmp_path):
    p = atomic_write_text(tmp_path / "m.jsonl", "a\n")
    atomic_write_text(p, '{"epoch": 1}\nü\n')
    assert p.read_text(encoding="utf-8") == '{"epoch": 1}\nü\n'
    assert [f.name for f in tmp_path.iterdir()] == ["m.jsonl"]


def test_json_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_json(tmp_path / "nope.json")
    assert "nope.json" in _one_line(e)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }\n')
    with pytest.raises(CheckpointError, match="malformed at line 2") as e:
        load_json(bad)
    _one_line(e)
    with pytest.raises(CheckpointError, match="finite numbers"):
        save_json(tmp_path / "nan.json", {"x": float("nan")})
    with pytest.raises(CheckpointError, match="finite numbers"):
        save_json(tmp_path / "obj.json", {"x": object()})
    assert not (tmp_path / "nan.json").exists()
    with pytest.raises(CheckpointError, match="does not exist; create it"):
        save_json(tmp_path / "no" / "dir.json", {})


# ----- npz round trip --------------------------------------------------------------------------
def test_npz_round_trip(tmp_path):
    arrays = _arrays()
    meta = {"kind": "checkpoint", "epoch": 3, "noise_state": json.dumps({"a": [1, 2]})}
    for compress in (False, True):
        p = atomic_write_npz(tmp_path / f"ck{compress}.npz", arrays, meta, compress=compress)
        got, got_meta = load_npz_checked(p)
        assert list(got) == list(arrays)
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape
            np.testing.assert_array_equal(got[k], v)
        assert got_meta == {**meta, "refvae_format": 1}
        # Plain NumPy reads it without pickle; the metadata is a 0-d unicode array.
        with np.load(p, allow_pickle=False) as z:
            assert z["__meta__"].shape == () and z["__meta__"].dtype.kind == "U"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ckFalse.npz", "ckTrue.npz"]


def test_npz_write_rejects_bad_input(tmp_path):
    with pytest.raises(CheckpointError, match="dtype object") as e:
        atomic_write_npz(tmp_path / "o.npz", {"x": np.array([{}, 1], dtype=object)}, {})
    _one_line(e)
    with pytest.raises(CheckpointError, match="invalid array name"):
        atomic_write_npz(tmp_path / "o.npz", {"__meta__": np.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        atomic_write_npz(tmp_path / "o.npz", {}, {"x": np.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def test_plain_savez_needs_require_meta_false(tmp_path):
    p = tmp_path / "params.npz"
    np.savez(p, **{"encoder.0.weight": np.ones((2, 3))})
    with pytest.raises(CheckpointError, match="not written by refvae") as e:
        load_npz_checked(p)
    assert str(p) in _one_line(e)
    arrays, meta = load_npz_checked(p, require_meta=False)
    assert meta == {} and arrays["encoder.0.weight"].shape == (2, 3)


# ----- every failure mode of a read ------------------------------------------------------------
def _good(tmp_path, name="good.npz"):
    return atomic_write_npz(tmp_path / name, {"w": np.arange(1000.0) + 0.25}, {"epoch": 1})


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_npz_checked(tmp_path / "missing.npz")
    assert "missing.npz" in _one_line(e)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_npz_checked(tmp_path)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_truncated_file(tmp_path, keep):
    p = _good(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_npz_checked(p)
    assert str(p) in _one_line(e)


def test_random_bytes(tmp_path):
    p = tmp_path / "random.npz"
    p.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(CheckpointError, match="not an .npz") as e:
        load_npz_checked(p)
    _one_line(e)


def test_bad_crc(tmp_path):
    p = _good(tmp_path)
    data = bytearray(p.read_bytes())
    payload = (np.arange(1000.0) + 0.25).tobytes()
    at = bytes(data).find(payload[800:816])
    assert at > 0
    data[at + 3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is corrupt \(entry 'w': Bad CRC-32") as e:
        load_npz_checked(p)
    _one_line(e)


def test_corrupt_deflate_stream(tmp_path):
    p = atomic_write_npz(tmp_path / "c.npz", {"w": np.arange(5000.0)}, {}, compress=True)
    data = bytearray(p.read_bytes())
    for i in range(200, 260):
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt") as e:
        load_npz_checked(p)
    _one_line(e)


@pytest.mark.parametrize("field,value,match", [(6, 210, "zip file version 21.0"),
                                               (10, 99, "compression method")])
def test_zip_feature_python_cannot_read(tmp_path, field, value, match):
    """Found by the reader fuzzing: a central-directory entry asking for zip version 21.0 (or an
    unknown compression method) made zipfile raise NotImplementedError through the reader."""
    p = _good(tmp_path)
    data = bytearray(p.read_bytes())
    at = bytes(data).find(b"PK\x01\x02")
    assert at > 0
    data[at + field:at + field + 2] = value.to_bytes(2, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt") as e:
        load_npz_checked(p)
    assert match in str(e.value)
    _one_line(e)


def test_pickled_object_array(tmp_path):
    p = tmp_path / "pickled.npz"
    np.savez(p, ok=np.zeros(2), evil=np.array([{"a": 1}, None], dtype=object),
             __meta__=np.array(json.dumps({"refvae_format": 1})))
    with pytest.raises(CheckpointError, match="pickled object array 'evil'") as e:
        load_npz_checked(p)
    _one_line(e)


def test_single_npy_and_foreign_zip_member(tmp_path):
    p = tmp_path / "single.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError, match="single .npy array"):
        load_npz_checked(p)
    z = tmp_path / "foreign.npz"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a .npy array"):
        load_npz_checked(z)


@pytest.mark.parametrize("meta,match", [
    ({"refvae_format": 2}, "format version 2, but this refvae reads version 1"),
    ({"other": 1}, "no 'refvae_format' version"),
    ("not json {", "unreadable metadata"),
    ([1, 2], "not a JSON object"),
])
def test_wrong_or_missing_format_version(tmp_path, meta, match):
    p = tmp_path / "v.npz"
    text = meta if isinstance(meta, str) else json.dumps(meta)
    np.savez(p, w=np.zeros(2), __meta__=np.array(text))
    with pytest.raises(CheckpointError, match=match) as e:
        load_npz_checked(p)
    _one_line(e)
    # require_meta=False does not excuse a present but wrong version.
    with pytest.raises(CheckpointError, match=match):
        load_npz_checked(p, require_meta=False)


def test_malformed_meta_entry(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, w=np.zeros(2), __meta__=np.zeros(3))
    with pytest.raises(CheckpointError, match="malformed __meta__"):
        load_npz_checked(p)


# ----- interrupted writes leave the previous file intact ---------------------------------------
def test_failed_rename_keeps_old_file(tmp_path, monkeypatch):
    p = _good(tmp_path, "ck.npz")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rio.os, "replace", boom)
    with pytest.raises(CheckpointError, match="No space left on device; the previous file is "
                                              "unchanged") as e:
        atomic_write_npz(p, {"w": np.zeros(5)}, {"epoch": 2})
    assert str(p) in _one_line(e)
    monkeypatch.undo()
    arrays, meta = load_npz_checked(p)
    assert meta["epoch"] == 1 and arrays["w"][3] == 3.25
    assert [f.name for f in tmp_path.iterdir()] == ["ck.npz"]  # temp file removed


def test_failure_during_write_keeps_old_file(tmp_path, monkeypatch):
    p = save_json(tmp_path / "c.json", {"v": 1})

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rio.os, "fsync", fail)
    with pytest.raises(KeyboardInterrupt):
        save_json(p, {"v": 2})
    monkeypatch.undo()
    assert load_json(p) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["c.json"]


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from refvae.util.files import atomic_write_npz
    path = sys.argv[1]
    i = 0
    while True:
        atomic_write_npz(path, {"x": np.full(300_000, float(i))}, {"i": i})
        if i == 1:
            print("ready", flush=True)
        i += 1
""")


def test_sigkill_during_writes_leaves_a_loadable_file(tmp_path):
    p = tmp_path / "ck.npz"
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(p)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        arrays, meta = load_npz_checked(p)
        assert meta["i"] >= 1
        assert arrays["x"].shape == (300_000,) and np.all(arrays["x"] == meta["i"])


# ----- directories -----------------------------------------------------------------------------
def test_ensure_writable_dir(tmp_path):
    d = ensure_writable_dir(tmp_path / "a" / "b")
    assert d.is_dir() and list(d.iterdir()) == []
    assert ensure_writable_dir(d) == d
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is an existing file") as e:
        ensure_writable_dir(f)
    _one_line(e)
    with pytest.raises(CheckpointError, match="cannot create output directory") as e:
        ensure_writable_dir(f / "sub")
    _one_line(e)


def test_unwritable_directory_simulated(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rio.tempfile, "mkstemp", denied)
    with pytest.raises(CheckpointError, match="is not writable: Permission denied") as e:
        ensure_writable_dir(tmp_path)
    _one_line(e)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*Permission denied") as e:
        atomic_write_npz(tmp_path / "x.npz", {}, {})
    _one_line(e)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="permissions do not bind root")
def test_ensure_writable_dir_read_only(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="is not writable") as e:
            ensure_writable_dir(d)
        _one_line(e)
        with pytest.raises(CheckpointError, match="cannot write checkpoint"):
            atomic_write_npz(d / "x.npz", {}, {})
    finally:
        d.chmod(0o700)
