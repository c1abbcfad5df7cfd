"""Hypothesis fuzzing of every file reader: random bytes, mangled archives and malformed arrays
may only ever raise refvae's own error types (never a bare ValueError, KeyError, zipfile error or
an unpickling attempt)."""
import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refvae import oracle
from refvae.data.load import load_dataset
from refvae.data.formats import read_idx
from refvae.errors import RefvaeError
from refvae.util.files import atomic_write_npz, load_json, load_npz_checked
from refvae.train.loop import load_run

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _mangle(data: bytes, cuts) -> bytes:
    """Flip, drop or truncate bytes at the positions hypothesis picked."""
    b = bytearray(data)
    for kind, pos in cuts:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] ^= 0xFF
        elif kind == 1:
            del b[i]
        else:
            b = b[:i]
    return bytes(b)


READERS = {
    "checkpoint npz": lambda p: load_npz_checked(p),
    "plain npz (oracle params)": lambda p: oracle.load_npz(p, "params"),
    "data set": lambda p: load_dataset(str(p)),
    "IDX": lambda p: read_idx(p),
    "JSON": lambda p: load_json(p),
}


def _only_refvae_errors(reader, path):
    try:
        reader(path)
    except RefvaeError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("reader", READERS, ids=list(READERS))
@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path, reader, data):
    suffix = {"data set": ".npz", "JSON": ".json", "IDX": "-idx3-ubyte"}.get(reader, ".npz")
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    _only_refvae_errors(READERS[reader], path)


@pytest.mark.parametrize("reader", ["checkpoint npz", "plain npz (oracle params)", "data set"])
@FUZZ
@given(cuts=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000)), min_size=1, max_size=4))
def test_mangled_archives(tmp_path, reader, cuts):
    good = tmp_path / "good.npz"
    atomic_write_npz(good, {"train": np.random.default_rng(0).random((4, 3))}, {"epoch": 1})
    path = tmp_path / "mangled.npz"
    path.write_bytes(_mangle(good.read_bytes(), cuts))
    _only_refvae_errors(READERS[reader], path)


ARRAYS = st.one_of(
    st.just(np.array([{"pickled": 1}], dtype=object)),
    st.just(np.array(["text", "more"])),
    st.just(np.zeros((0, 3))),
    st.just(np.full((2, 3), np.nan)),
    st.just(np.array(3.0)),
    st.just(np.zeros((2, 3, 4, 5))),
    st.just(np.array([1 + 2j])),
    st.just(np.array([True, False])),
)


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from(["train", "test", "y", "eps", "gumbel", "temperature",
                                               "x"]),
                              ARRAYS, min_size=1, max_size=3))
def test_malformed_arrays_in_data_and_oracle_files(tmp_path, arrays):
    path = tmp_path / "weird.npz"
    with zipfile.ZipFile(path, "w") as zf:  # np.savez would refuse nothing, but be explicit
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=True)
            zf.writestr(f"{name}.npy", buf.getvalue())
    _only_refvae_errors(READERS["data set"], path)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"data_dim": 3, "latent_dim": 2, "encoder_hidden": [],
                               "decoder_hidden": []}))
    from refvae.math.vae import VAE

    params = tmp_path / "params.npz"
    np.savez(params, **VAE(json.loads(cfg.read_text())).init_params(0))
    try:
        oracle.compute(cfg, params, path)
    except RefvaeError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(meta=st.dictionaries(st.sampled_from(["epoch", "step", "config", "noise_state", "optimizer",
                                             "optimizer_scalars", "estimator_state"]),
                            st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=5),
                                      st.lists(st.integers(), max_size=2)), max_size=6))
def test_checkpoints_with_malformed_metadata(tmp_path, meta):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps({"data_dim": 3, "latent_dim": 2}))
    atomic_write_npz(run / "checkpoint.npz", {"param/x": np.zeros(2)}, meta)
    _only_refvae_errors(load_run, run)
