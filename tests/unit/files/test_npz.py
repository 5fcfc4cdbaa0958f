"""Files that never unpickle (``_files.npz``): atomic writes and checked reads."""

import io
import json
import os
import pathlib
import pickle
import stat
import zipfile
from functools import partial

import numpy as np
import pytest

from sklearn_lib._files import npz
from sklearn_lib._files.npz import (
    CONTENT_ERRORS,
    as_path,
    check_float_dtype,
    check_meta_size,
    expect_shape,
    json_default,
    read_npy,
    read_npz,
    write_atomically,
)


def _npz(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    return buffer


def _zip(members):
    """An archive of raw members ``{name: bytes}``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def _npy(array=None, header=None, data=b"", version=(1, 0)):
    """``.npy`` bytes of ``array``, or of a hand-made ``header`` followed by ``data``."""
    buffer = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(buffer, header)
        buffer.write(data)
    return buffer.getvalue()


def _leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


# -- paths and JSON -------------------------------------------------------------------------
def test_paths_are_used_exactly_as_given(tmp_path):
    assert as_path("a/b.graph") == "a/b.graph"
    assert as_path(pathlib.Path("a") / "b") == os.path.join("a", "b")
    target = tmp_path / "fit"  # no suffix appended
    write_atomically(as_path(target), lambda file: file.write(b"x"))
    assert os.listdir(tmp_path) == ["fit"]


@pytest.mark.parametrize("path", [b"a.npz", 3, None])
def test_paths_must_be_str_or_pathlike(path):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, not"):
        as_path(path)


def test_json_default_turns_numpy_into_python():
    info = {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3), "b": np.bool_(True)}
    assert json.loads(json.dumps(info, default=json_default)) == {
        "n": 3,
        "x": 0.5,
        "a": [0, 1, 2],
        "b": True,
    }
    with pytest.raises(TypeError, match="info value <object .*> of type object cannot be saved"):
        json.dumps({"o": object()}, default=json_default)


# -- atomic writes --------------------------------------------------------------------------
def test_a_write_creates_or_replaces_the_file(tmp_path):
    path = str(tmp_path / "f.npz")
    write_atomically(path, lambda file: file.write(b"first"))
    assert open(path, "rb").read() == b"first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    write_atomically(path, lambda file: file.write(b"second"))
    assert open(path, "rb").read() == b"second" and not _leftovers(tmp_path)


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    write_atomically(str(path), lambda file: file.write(b"new"))
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o640


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_the_old_file(tmp_path, error):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def write(file):
        file.write(b"partial")
        raise error("stop")

    with pytest.raises(error, match="stop"):
        write_atomically(str(path), write)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_a_symbolic_link_is_followed(tmp_path):
    target, link = tmp_path / "target", tmp_path / "link"
    target.write_bytes(b"old")
    link.symlink_to(target)
    write_atomically(str(link), lambda file: file.write(b"new"))
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_a_folder_is_not_replaced(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder, not a file"):
        write_atomically(str(tmp_path / "folder"), lambda file: file.write(b"x"))
    with pytest.raises(IsADirectoryError, match="ends with a separator"):
        write_atomically(str(tmp_path / "new") + os.sep, lambda file: file.write(b"x"))
    assert sorted(os.listdir(tmp_path)) == ["folder"]


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder"):
        write_atomically(str(tmp_path / "missing" / "f"), lambda file: file.write(b"x"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_a_special_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        write_atomically(str(tmp_path / "pipe"), lambda file: file.write(b"x"))
    assert not _leftovers(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anything")
def test_a_read_only_file_is_refused(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match="is not writable"):
        write_atomically(str(path), lambda file: file.write(b"new"))
    assert path.read_bytes() == b"old" and not _leftovers(tmp_path)


# -- checked reads --------------------------------------------------------------------------
def test_float_arrays_and_meta_round_trip(rng):
    arrays = {
        "a": rng.normal(size=(3, 4)),
        "b": np.asfortranarray(rng.normal(size=(2, 5)).astype(np.float32)),
        "c": np.zeros((0, 3), dtype=np.float16),
        "d": np.array(2.5).astype(">f8"),
        "meta": np.array(json.dumps({"k": [1, 2]})),
    }
    meta, read = read_npz(_npz(**arrays))
    assert list(read) == list(arrays)[:-1]
    for key, value in read.items():
        # In this machine's byte order (torch takes no other): "d" was stored big-endian.
        native = arrays[key].dtype.newbyteorder("=")
        assert value.dtype == native and value.dtype.isnative and value.shape == arrays[key].shape
        np.testing.assert_array_equal(value, arrays[key])
    assert json.loads(meta) == {"k": [1, 2]}


def test_without_meta_there_is_no_meta():
    meta, read = read_npz(_npz(a=np.ones(2)))
    assert meta is None and list(read) == ["a"]


def _layout(order, seen=None):
    """A layout reading the keys of ``order`` in that order, recording what each check saw."""

    def check(key, shape, arrays):
        if seen is not None:
            seen.append((key, shape, sorted(arrays)))

    def layout(text, keys):
        return json.loads(text), {key: partial(check, key) for key in order}

    return layout


def test_the_layout_orders_the_members_and_each_check_sees_those_read():
    seen = []
    meta, read = read_npz(
        _npz(z=np.zeros(1), a=np.zeros(2), m=np.zeros(3), meta=np.array('{"x": 1}')),
        _layout(["m", "z", "a"], seen),
    )
    assert meta == {"x": 1} and list(read) == ["m", "z", "a"]
    assert seen == [("m", (3,), []), ("z", (1,), ["m"]), ("a", (2,), ["m", "z"])]


def test_the_layout_sees_meta_and_the_keys_before_any_array_is_read():
    def layout(text, keys):
        assert text == "{}" and keys == {"a", "b"}
        raise ValueError("refused")

    damaged = _zip([("meta.npy", _npy(np.array("{}"))), ("a.npy", b"x"), ("b.npy", b"y")])
    with pytest.raises(ValueError, match="refused"):
        read_npz(damaged, layout)


def test_a_layout_needs_meta_and_exactly_its_members():
    with pytest.raises(ValueError, match="no 'meta' array"):
        read_npz(_npz(a=np.ones(2)), _layout(["a"]))
    archive = _npz(a=np.ones(2), b=np.ones(2), meta=np.array("{}"))
    with pytest.raises(
        ValueError, match=r"the arrays \['a', 'b'\] are not those of 'meta' \['a'\]"
    ):
        read_npz(archive, _layout(["a"]))


def test_a_header_with_another_shape_is_refused_before_its_data():
    # The header claims a huge array, and the member holds no data at all.
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    archive = _zip([("meta.npy", _npy(np.array("{}"))), ("x.npy", _npy(header=header))])

    def layout(text, keys):
        return {}, {"x": lambda shape, arrays: expect_shape("x", shape, (2, 3))}

    with pytest.raises(ValueError, match=r"array 'x' has shape \(1000000, 1000000\), not \(2, 3\)"):
        read_npz(archive, layout)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(3),
        np.array([True]),
        np.array([1 + 2j]),
        np.array(["a"]),
        np.zeros(2, dtype=[("x", "<f8")]),
        np.array([{"a": 1}], dtype=object),
    ],
)
def test_non_float_arrays_are_refused(array, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(ValueError, match="array 'x' has dtype .*, not floating point"):
        read_npz(_zip([("x.npy", _npy(array))]))


@pytest.mark.parametrize("meta", [np.array(1.0), np.array(["a", "b"]), np.array(b"abc")])
def test_meta_must_be_one_string(meta):
    with pytest.raises(ValueError, match="'meta' is an array of .*, not a string"):
        read_npz(_npz(meta=meta))


def test_members_must_be_npy_files():
    with pytest.raises(ValueError, match="unexpected member 'x.txt' \\(not a distinct .npy\\)"):
        read_npz(_zip([("x.txt", b"hello")]))


def test_members_must_be_distinct():
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = _zip([("x.npy", _npy(np.zeros(1))), ("x.npy", _npy(np.ones(1)))])
    with pytest.raises(ValueError, match="unexpected member 'x.npy'"):
        read_npz(archive)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_versions_one_and_two(version, rng):
    array = rng.normal(size=(2, 3))
    stream = io.BytesIO(_npy(array, version=version))
    np.testing.assert_array_equal(read_npy("x", stream), array)


def test_other_npy_versions_are_refused():
    stream = io.BytesIO(_npy(np.zeros(2), version=(3, 0)))
    with pytest.raises(ValueError, match=r"unsupported .npy format version \(3, 0\)"):
        read_npy("x", stream)


@pytest.mark.parametrize(
    "shape, data, match",
    [
        ((4,), np.zeros(3).tobytes(), r"holds 24 bytes, not the 32 of \(4,\)"),
        ((2,), np.zeros(3).tobytes(), r"holds 16 bytes, not the 16"),  # bytes left over
        ((-1, 2), b"", "negative size in its shape"),
    ],
)
def test_data_must_match_the_header(shape, data, match):
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    with pytest.raises(ValueError, match=match):
        read_npy("x", io.BytesIO(_npy(header=header, data=data)))


def test_damaged_archives_raise_content_errors(rng):
    good = _npz(a=rng.normal(size=100)).getvalue()
    flipped = bytearray(good)
    flipped[500] ^= 0xFF  # inside the data: the CRC fails
    for damaged in (b"not a zip file", good[: len(good) // 2], bytes(flipped)):
        with pytest.raises(CONTENT_ERRORS):
            read_npz(io.BytesIO(damaged))
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        read_npz(io.BytesIO(bytes(flipped)))


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", ">f8"])
def test_float_dtypes_pass(dtype):
    check_float_dtype("x", np.dtype(dtype))


@pytest.mark.parametrize("dtype", ["<i8", "|b1", "<c16", "O", "<U3", "<M8[s]"])
def test_other_dtypes_fail(dtype):
    with pytest.raises(ValueError, match=r"array 'x' has dtype .*, not floating point"):
        check_float_dtype("x", np.dtype(dtype))


# -- reading no more than a file's legitimate contents --------------------------------------
def test_meta_longer_than_a_file_may_hold_is_refused_from_its_header(monkeypatch):
    monkeypatch.setattr(npz, "MAX_META_CHARS", 10)
    assert read_npz(_npz(meta=np.array("0123456789")))[0] == "0123456789"
    # The header claims 11 characters and the member holds none: refused unread.
    header = {"descr": "<U11", "fortran_order": False, "shape": ()}
    with pytest.raises(ValueError, match="'meta' holds 11 characters, more than the 10"):
        read_npz(_zip([("meta.npy", _npy(header=header))]))


def test_check_meta_size(monkeypatch):
    monkeypatch.setattr(npz, "MAX_META_CHARS", 3)
    check_meta_size("abc")
    with pytest.raises(ValueError, match="'meta' would hold 4 characters, more than the 3"):
        check_meta_size("abcd")


def test_a_member_of_another_size_than_its_header_implies_is_refused_before_its_data():
    # 3 floats' header, then a megabyte of data: the archive says so, and it is not read.
    header = {"descr": "<f8", "fortran_order": False, "shape": (3,)}
    member = _npy(header=header, data=bytes(1 << 20))
    archive = _zip([("meta.npy", _npy(np.array("{}"))), ("x.npy", member)])
    with pytest.raises(ValueError, match=r"'x' takes 1048704 bytes in the archive, but .* 152"):
        read_npz(archive)


@pytest.mark.parametrize("chunk", [1, 7, 8, 1 << 20])
def test_data_is_read_in_chunks(monkeypatch, rng, chunk):
    monkeypatch.setattr(npz, "READ_CHUNK", chunk)
    sizes = []
    real_read = zipfile.ZipExtFile.read

    def read(self, n=-1):
        sizes.append(n)
        return real_read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
    array = rng.normal(size=(5, 3))
    _, read_back = read_npz(_npz(a=array))
    np.testing.assert_array_equal(read_back["a"], array)
    # numpy reads the header (magic, length, text); then the 120 bytes of data come in
    # chunks, and one more byte is asked for past the end.
    data = sizes[3:]
    assert data[:-1] == [min(chunk, 120 - start) for start in range(0, 120, chunk)]
    assert data[-1] == 1


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_members_neither_stored_nor_deflated_are_refused_unread(method):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("x.npy", _npy(np.zeros(3)))
    with pytest.raises(ValueError, match=f"'x.npy' is compressed with method {method}, not"):
        read_npz(buffer)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_stored_and_deflated_members_are_read(method, rng):
    array = rng.normal(size=7)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("x.npy", _npy(array))
    np.testing.assert_array_equal(read_npz(buffer)[1]["x"], array)
