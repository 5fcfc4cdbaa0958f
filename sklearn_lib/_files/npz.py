"""Files that never unpickle: atomic writes and checked reads of ``.npz`` archives.

Every format the package saves (interaction graphs; fitted bases) follows
the same rules:

- a write goes to a temporary file in the target's folder, synced, then
  moved onto the target with ``os.replace``: an interrupted save leaves the
  previous file intact;
- the path is used exactly as given (no suffix appended), so ``save(path)``
  and ``load(path)`` take the same string;
- a read checks every array's header before reading its data, refuses
  anything but floating-point arrays (and the JSON string ``meta``), and
  never unpickles; the format's own checks then validate the contents, and
  anything wrong is a ``ValueError`` naming the problem.
"""

import contextlib
import errno
import math
import os
import secrets
import stat
import struct
import zipfile
import zlib

import numpy as np

# What reading a damaged archive can raise (zipfile: NotImplementedError for an
# unknown compression, RuntimeError for an encrypted member; struct.error and
# zlib.error for mangled headers and data).  Errors opening the path are not
# among them: they are raised before.
CONTENT_ERRORS = (
    ValueError,
    KeyError,
    EOFError,
    OSError,
    RuntimeError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
)


def as_path(path):
    """``path`` as a str, used exactly as given (no suffix appended)."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if isinstance(path, str):
            return path
    raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")


def json_default(value):
    """Numpy scalars and arrays as plain Python numbers and lists, for ``json.dumps``."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"info value {value!r} of type {type(value).__name__} cannot be saved as JSON")


def write_atomically(path, write):
    """Call ``write(file)`` on a new file next to ``path``, then move it onto ``path``.

    A symbolic link is followed: its target is what gets replaced.  An
    existing file keeps its permissions; one that is not writable, or not a
    regular file (a folder, a device), is refused before anything is
    written.
    """
    if path.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise IsADirectoryError(errno.EISDIR, f"{path!r} ends with a separator: a folder")
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"No folder {folder!r} to save {path!r} in")
    mode = 0o666  # a new file's, less the umask (tempfile.mkstemp's would be 0o600)
    if os.path.exists(target):
        info = os.stat(target)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{path!r} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path!r} exists and is not a regular file; only files are replaced")
        if not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, f"{path!r} is not writable")
        mode = stat.S_IMODE(info.st_mode)
    # Hidden and random; O_EXCL never reuses a file.
    temp = os.path.join(folder, f".sklearn-lib-{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temp, flags, mode)
    try:
        if os.path.exists(target):
            os.chmod(temp, mode)  # exactly the old file's, whatever the umask
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    # The rename itself is durable once the folder is synced (POSIX only;
    # some file systems refuse, and the file is in place either way).
    if os.name == "posix":
        with contextlib.suppress(OSError):
            folder_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)


def read_npz(file, rank=None, expected_shape=None):
    """Every array of an ``.npz`` archive by name, each header checked before its data.

    Data is read as raw bytes, so no pickle is ever loaded.

    Parameters
    ----------
    file : file object
    rank : callable, optional
        ``rank(key)`` orders the members (default: as stored), so that a
        format can read the arrays that fix the others' shapes first.
    expected_shape : callable, optional
        ``expected_shape(key, arrays_so_far)`` returns the shape the member
        must have, or None; a header claiming another one is refused before
        its data is read, so a small file cannot claim a huge array.
    """
    arrays = {}
    with zipfile.ZipFile(file) as archive:
        members = {}
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if key == info.filename or key in members:
                raise ValueError(f"unexpected member {info.filename!r} (not a distinct .npy)")
            members[key] = info
        for key in sorted(members, key=rank) if rank else members:
            expected = expected_shape(key, arrays) if expected_shape else None
            with archive.open(members[key]) as member:
                arrays[key] = read_npy(key, member, expected)
    return arrays


def read_npy(key, member, expected_shape=None):
    """The array of one ``.npy`` stream, refused from its header unless float (or ``meta``)."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"array {key!r} has unsupported .npy format version {version}")
    if key == "meta":
        if dtype.kind != "U" or shape != ():
            raise ValueError(f"'meta' is an array of {dtype} with shape {shape}, not a string")
    else:
        check_float_dtype(key, dtype)
    if any(size < 0 for size in shape):
        raise ValueError(f"array {key!r} has a negative size in its shape {shape}")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise ValueError(f"array {key!r} has shape {shape}, not {tuple(expected_shape)}")
    n_bytes = math.prod(shape) * dtype.itemsize
    data = member.read(n_bytes)
    # Reading on to the end also checks the member's CRC.
    if len(data) != n_bytes or member.read(1):
        raise ValueError(f"array {key!r} holds {len(data)} bytes, not the {n_bytes} of {shape}")
    order = "F" if fortran_order else "C"
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy()


def check_float_dtype(key, dtype):
    """Raise ValueError unless array ``key`` has a floating point ``dtype``."""
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"array {key!r} has dtype {dtype}, not floating point")
