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
  anything wrong is a ``ValueError`` naming the problem;
- a read holds no more memory than the file's legitimate contents: ``meta``
  is read first and is at most :data:`MAX_META_CHARS` long; it says which
  arrays the file holds and of what shapes, so a missing or unexpected
  member, or a header claiming another shape, is refused before any array's
  data is read; a member whose size in the archive is not what its header
  implies is refused before its data; and data is decompressed in chunks of
  :data:`READ_CHUNK`, never more than the header declares (a zip bomb of a
  few megabytes that decompresses to gigabytes costs a chunk, not gigabytes).
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
from functools import partial

import numpy as np

#: The most characters ``meta`` may have: 16 MiB as the UTF-32 that ``.npy`` stores.
#: Files hold kilobytes of it (names, shapes, parameters, digests); the bound
#: caps what a file can make a reader decompress before anything else is
#: checked, and saving refuses a longer one, so every file saved loads.
MAX_META_CHARS = 1 << 22

#: Bytes decompressed by one read of a member: what reading an array holds
#: besides the array itself.
READ_CHUNK = 1 << 20

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


def open_for_reading(path):
    """``path`` opened for reading in binary, refused unless a regular file.

    Opened without blocking, then checked: a FIFO that nothing writes to, a
    device or a folder would otherwise block or fail deep in the reader.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path!r} is not a regular file (a FIFO, a device or a folder)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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


def check_meta_size(text):
    """Raise ValueError if the ``meta`` ``text`` is longer than :data:`MAX_META_CHARS`."""
    if len(text) > MAX_META_CHARS:
        raise ValueError(
            f"its 'meta' would hold {len(text)} characters, more than the {MAX_META_CHARS} "
            "a file may hold"
        )


def read_npz(file, layout=None):
    """``(meta, arrays)`` of an ``.npz`` archive, each member's header checked before its data.

    ``meta`` is read first; data is read as raw bytes in chunks of
    :data:`READ_CHUNK`, so no pickle is ever loaded and no member costs
    more memory than the data its header declares.

    Parameters
    ----------
    file : file object
    layout : callable, optional
        ``layout(text, keys) -> (meta, shapes)``: from the string of
        ``meta`` and the set of the other members' keys, the parsed meta and
        ``{key: check}`` for every member, in reading order.  It raises
        ValueError for a member missing or unexpected (before any array is
        read).  ``check(shape, arrays=arrays)`` raises ValueError for a
        header's shape that the meta and the ``arrays`` read so far do not
        imply, before that member's data is read.  Without a layout: ``meta``'s
        string (None without one) and every other member, in stored order.
    """
    with zipfile.ZipFile(file) as archive:
        members = {}
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if key == info.filename or key in members:
                raise ValueError(f"unexpected member {info.filename!r} (not a distinct .npy)")
            # zipfile bounds what one read decompresses for these only (bzip2 and lzma
            # decompress a whole chunk of input at once); numpy writes no others.
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(
                    f"member {info.filename!r} is compressed with method {info.compress_type}, "
                    "not stored or deflated"
                )
            members[key] = info
        meta = None
        if "meta" in members:
            meta = str(_read_member(archive, members.pop("meta"), "meta")[()])
        if layout is None:
            return meta, {key: _read_member(archive, info, key) for key, info in members.items()}
        if meta is None:
            raise ValueError("no 'meta' array")
        meta, shapes = layout(meta, set(members))
        if set(shapes) != set(members):  # the layout names the problem; this is its backstop
            raise ValueError(f"the arrays {sorted(members)} are not those of 'meta' {list(shapes)}")
        arrays = {}
        for key, check in shapes.items():
            arrays[key] = _read_member(archive, members[key], key, partial(check, arrays=arrays))
    return meta, arrays


def _read_member(archive, info, key, check=None):
    with archive.open(info) as member:
        return read_npy(key, member, check, size=info.file_size)


def read_npy(key, member, check=None, size=None):
    """The array of one ``.npy`` stream, refused from its header unless float (or ``meta``).

    Parameters
    ----------
    key : str
        The array's name (``"meta"``: a string of at most :data:`MAX_META_CHARS`).
    member : file object
    check : callable, optional
        ``check(shape)`` raises ValueError for a shape the format does not
        imply, before the data is read.
    size : int, optional
        The stream's size as its archive declares it: it must be what the
        header implies, before the data is read.
    """
    shape, fortran_order, dtype = _read_header(key, member)
    if check is not None:
        check(shape)
    n_bytes = math.prod(shape) * dtype.itemsize
    if size is not None and size != member.tell() + n_bytes:
        raise ValueError(
            f"array {key!r} takes {size} bytes in the archive, but its header and its "
            f"{n_bytes} bytes of data ({shape} of {dtype}) take {member.tell() + n_bytes}"
        )
    data = bytearray()  # grows with what arrives, never ahead of it
    while len(data) < n_bytes:
        chunk = member.read(min(READ_CHUNK, n_bytes - len(data)))
        if not chunk:
            break
        data += chunk
    # Reading on to the end also checks the member's CRC.
    if len(data) != n_bytes or member.read(1):
        raise ValueError(f"array {key!r} holds {len(data)} bytes, not the {n_bytes} of {shape}")
    order = "F" if fortran_order else "C"
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order=order)
    # In this machine's byte order: torch takes no other (a big-endian file is valid).
    return array.astype(dtype.newbyteorder("="), copy=False)


def _read_header(key, member):
    """``(shape, fortran_order, dtype)`` of a ``.npy`` header, refused unless float (or
    ``meta``'s string, of at most :data:`MAX_META_CHARS`)."""
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
        if dtype.itemsize > 4 * MAX_META_CHARS:  # UTF-32: 4 bytes a character
            raise ValueError(
                f"'meta' holds {dtype.itemsize // 4} characters, more than the "
                f"{MAX_META_CHARS} a file may hold"
            )
    else:
        check_float_dtype(key, dtype)
    if any(n < 0 for n in shape):
        raise ValueError(f"array {key!r} has a negative size in its shape {shape}")
    return tuple(shape), fortran_order, dtype


def expect_shape(key, shape, expected):
    """Raise ValueError unless array ``key``'s header ``shape`` is ``expected``."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"array {key!r} has shape {tuple(shape)}, not {tuple(expected)}")


def check_float_dtype(key, dtype):
    """Raise ValueError unless array ``key`` has a floating point ``dtype``."""
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"array {key!r} has dtype {dtype}, not floating point")
