"""Shared helpers of the hostile-input catalogue (issue 16): the files a hostile user hands the CLI,
and the check that a command answered with exactly one line on stderr."""
import io
import json
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from refvae.cli.main import main

CFG = dict(data_dim=6, latent_dim=2, encoder_hidden=[4], decoder_hidden=[4], activation="tanh")


def config_file(root: Path, name: str, text) -> Path:
    """A config file holding ``text`` (a dict is written as JSON over the small default config)."""
    path = root / name
    path.write_text(json.dumps({**CFG, **text}) if isinstance(text, dict) else text)
    return path


def npy_header_bytes(shape, dtype="<f8") -> bytes:
    """A ``.npy`` file whose header declares ``shape`` but which holds no data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf,
                                         {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz_with_member(path: Path, name: str, data: bytes, compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        zf.writestr(name, data)
    return path


def zeros_deflated_member(path: Path, name: str, n_floats: int) -> Path:
    """An ``.npz`` whose one member is ``n_floats`` float64 zeros, deflated (a few hundred KB)."""
    header = npy_header_bytes((n_floats,))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as member:
            member.write(header)
            block = bytes(1 << 22)
            left = 8 * n_floats
            while left:
                member.write(block[:min(left, len(block))])
                left -= min(left, len(block))
    return path


def set_encrypted_flag(path: Path) -> Path:
    """Flip the "encrypted" bit (bit 0 of the general-purpose flags) of every zip entry."""
    b = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = b.find(sig)
        while i >= 0:
            b[i + offset] |= 1
            i = b.find(sig, i + 4)
    path.write_bytes(bytes(b))
    return path


def idx_gz_claiming(path: Path, dims, payload: bytes = b"\x00" * 100) -> Path:
    raw = bytes([0, 0, 0x08, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + payload
    c = zlib.compressobj(wbits=31)
    path.write_bytes(c.compress(raw) + c.flush())
    return path


def one_line(code: int, err: str) -> str:
    """Assert the answer to bad input: exit 2, one stderr line starting ``refvae: error:``, no
    traceback and no warning before it; returns the line."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert re.match(r"refvae( [a-z]+)*: error: ", lines[0]) and "Traceback" not in err, err
    return lines[0]


# ----- a small training run through the CLI, in-process (the round-three catalogue) ---------
SMALL = ["--epochs", "1", "--batch-size", "16", "--latent-dim", "2", "--encoder-hidden", "4",
         "--decoder-hidden", "4", "--no-figures", "--quiet", "--threads", "1"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train=rng.random((32, 6)), test=rng.random((8, 6)), image_shape=np.array([2, 3]))
    return path


def run_cli(capsys, *args):
    """``main(args)`` in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err
