"""Corrupt, truncated and hostile GGUF files: one readable error, exit status 2, no huge allocations."""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cli import main
from engine.errors import GGUFError
from engine.gguf.reader import open_gguf
from tests.ggufs import write_tiny_gguf


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("valid") / "valid.gguf").read_bytes()


def _header_boundaries(data: bytes) -> dict[str, int]:
    """Byte offsets of the file's sections, found by parsing it with our own reader."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as fh:
        fh.write(data)
    with open_gguf(fh.name) as gf:
        first_tensor = gf.tensors[0].offset
        data_offset = gf.data_offset
    Path(fh.name).unlink()
    return {"data": data_offset, "first_tensor": first_tensor}


def _run_info(path: Path, capsys) -> tuple[int, str]:
    status = main(["info", str(path)])
    err = capsys.readouterr().err
    return status, err


def _assert_one_line_error(status: int, err: str, path: Path, *fragments: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llmlens: error: ")
    assert str(path.name) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_not_gguf(tmp_path, capsys):
    path = _write(tmp_path, "notes.gguf", b"hello, this is a text file\n")
    _assert_one_line_error(*_run_info(path, capsys), path, "not a GGUF file")


def test_empty_file(tmp_path, capsys):
    path = _write(tmp_path, "empty.gguf", b"")
    _assert_one_line_error(*_run_info(path, capsys), path, "not a GGUF file")


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "absent.gguf"
    _assert_one_line_error(*_run_info(path, capsys), path, "cannot open")


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_unsupported_version(tmp_path, capsys, valid_bytes, version):
    data = valid_bytes[:4] + struct.pack("<I", version) + valid_bytes[8:]
    path = _write(tmp_path, "version.gguf", data)
    _assert_one_line_error(*_run_info(path, capsys), path, f"unsupported GGUF version {version}")


def test_truncated_everywhere(tmp_path, valid_bytes):
    """Every cut inside the header or the tensor data is reported, never crashes."""
    bounds = _header_boundaries(valid_bytes)
    cuts = list(range(0, bounds["data"], 7)) + [bounds["data"], bounds["first_tensor"] + 1,
                                                 len(valid_bytes) - 1]
    for cut in cuts:
        path = _write(tmp_path, "cut.gguf", valid_bytes[:cut])
        with pytest.raises(GGUFError) as exc:
            open_gguf(path)
        assert "cut.gguf" in str(exc.value)


def test_truncated_data_message(tmp_path, capsys, valid_bytes):
    path = _write(tmp_path, "short.gguf", valid_bytes[:-100])
    _assert_one_line_error(*_run_info(path, capsys), path, "runs past the end of the file")


def _patch_u64_after(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<Q", value) + data[offset + 8:]


def test_absurd_tensor_count_allocates_nothing(tmp_path, capsys, valid_bytes):
    path = _write(tmp_path, "count.gguf", _patch_u64_after(valid_bytes, 8, 2**60))
    tracemalloc.start()
    status, err = _run_info(path, capsys)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _assert_one_line_error(status, err, path, "tensor count")
    assert peak < 50 * 2**20


def test_absurd_string_length(tmp_path, capsys, valid_bytes):
    # The first metadata key's length field sits right after the two counts (offset 24).
    path = _write(tmp_path, "string.gguf", _patch_u64_after(valid_bytes, 24, 2**40))
    tracemalloc.start()
    status, err = _run_info(path, capsys)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _assert_one_line_error(status, err, path, "truncated")
    assert peak < 50 * 2**20


def _tensor_info_field(data: bytes, tensor_name: bytes, field: str) -> int:
    """Offset of a tensor-info field (type or data offset) for the named tensor."""
    name_at = data.index(struct.pack("<Q", len(tensor_name)) + tensor_name)
    pos = name_at + 8 + len(tensor_name)
    (n_dims,) = struct.unpack_from("<I", data, pos)
    pos += 4 + 8 * n_dims
    return pos if field == "type" else pos + 4


def test_unknown_ggml_type(tmp_path, capsys, valid_bytes):
    at = _tensor_info_field(valid_bytes, b"blk.0.attn_norm.weight", "type")
    data = valid_bytes[:at] + struct.pack("<I", 999) + valid_bytes[at + 4:]
    path = _write(tmp_path, "type.gguf", data)
    _assert_one_line_error(*_run_info(path, capsys), path, "unknown ggml type 999")


def test_tensor_data_past_end(tmp_path, capsys, valid_bytes):
    at = _tensor_info_field(valid_bytes, b"blk.0.attn_norm.weight", "offset")
    path = _write(tmp_path, "offset.gguf", _patch_u64_after(valid_bytes, at, 2**30))
    _assert_one_line_error(*_run_info(path, capsys), path, "runs past the end of the file")


def test_cli_prints_no_traceback(tmp_path):
    path = _write(tmp_path, "bad.gguf", b"GGUF" + b"\xff" * 20)
    proc = subprocess.run([sys.executable, "-m", "app", "info", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutations_and_truncations(tmp_path, valid_bytes, data):
    """Any mutation or truncation yields a parsed file or our own error, nothing else."""
    buf = bytearray(valid_bytes)
    header_end = _header_boundaries(valid_bytes)["data"]
    n_flips = data.draw(st.integers(0, 8))
    for _ in range(n_flips):
        # Most interesting bytes are in the header; hit the data region sometimes too.
        hi = data.draw(st.sampled_from([header_end, len(buf)]))
        pos = data.draw(st.integers(0, hi - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.just(len(buf)), st.integers(0, len(buf))))
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(buf[:cut]))
    try:
        gf = open_gguf(path)
    except GGUFError:
        return
    with gf:
        for info in gf.tensors:
            assert gf.raw(info).nbytes == info.n_bytes
        from engine.gguf.summary import summarize

        summarize(gf)


@pytest.mark.parametrize("argv", [
    ["info"], ["tokenize", "{path}", "hi"], ["generate", "{path}", "-p", "hi", "-n", "1"],
    ["logits", "{path}", "--ids", "1", "--out", "{tmp}/l.npy"],
    ["trace", "{path}", "--ids", "1", "--out", "{tmp}/t.npz"],
    ["bench", "{path}", "-p", "4", "-n", "1", "--reps", "1", "--no-bandwidth"],
    ["bench", "{path}", "--inspect"], ["bench", "{path}", "-d", "8", "--json"],
], ids=lambda a: " ".join(x for x in a if not x.startswith("{")))
def test_every_command_refuses_a_missing_file_in_one_line(tmp_path, capsys, argv):
    path = tmp_path / "absent.gguf"
    args = [a.format(path=path, tmp=tmp_path) for a in argv]
    if "{path}" not in argv:
        args.append(str(path))
    _assert_one_line_error(main(args), capsys.readouterr().err, path, "cannot open")
