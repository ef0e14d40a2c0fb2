"""Atomic, validated file I/O shared by every file format in prefrl.

Array files are ``.npz`` (read with ``allow_pickle=False``) whose JSON header
travels inside the archive as the uint8 array ``__header__``; a header always
holds ``kind`` (what the file is) and ``schema_version``. Every write goes to a
temporary file in the destination directory and is moved into place with
``os.replace``, so a crash never leaves a half-written file under the real name.

A temporary file is named ``.<name>.<random>.<pid>.tmp`` after its writer's
process id. One left by a killed writer (``kill -9`` between creating and
moving it) is removed by :func:`remove_stale_temp_files` once that process no
longer runs; a live writer's file is never touched. The cleanup runs the first
time a process writes into a folder (so every command, run and sweep cleans
the folders it writes to) and when a sweep takes its result directory's lock.
Process ids are checked on this machine: a folder must not be written from
several machines at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

HEADER_KEY = "__header__"


class FileFormatError(ValueError):
    """A file is missing, truncated, of the wrong kind, or fails validation."""


def jsonable(x: Any, *, keep_non_finite: bool = False, strict: bool = False) -> Any:
    """``x`` as JSON types: the one conversion every writer of JSON uses.

    NumPy/JAX scalars become numbers, arrays lists, mapping keys strings;
    non-finite floats become None (JSON has no NaN) unless ``keep_non_finite``
    (Python's ``json`` then writes ``NaN``, which the project's own readers
    accept). Other objects pass unchanged, or raise ``TypeError`` if ``strict``.
    """
    again = lambda v: jsonable(v, keep_non_finite=keep_non_finite, strict=strict)
    if isinstance(x, Mapping):
        return {str(k): again(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [again(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if keep_non_finite or math.isfinite(float(x)) else None
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # NumPy and JAX arrays
        return again(x.tolist())
    if strict and not (x is None or isinstance(x, str)):
        raise TypeError(f"a value of type {type(x).__name__} is not JSON-serialisable")
    return x


_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")
_CLEANED: set[Path] = set()  # folders this process has cleaned (once each)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's counts as running)."""
    if pid <= 0:  # 0 and negative numbers address process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.<random>.<pid>.tmp`` files of writers that no longer run.

    Returns the removed paths. Files of a running process, and ``.tmp`` files
    without a process id in their name, stay.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp"):
        match = _TEMP_NAME.match(tmp.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    The first write of this process into a folder also removes the temporary
    files killed writers left there (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    try:
        return _atomic_write(path, data)
    except OSError as err:
        if err.filename is not None and str(path) in str(err.filename):
            raise
        # Name the file (ENOSPC, EROFS, EACCES come without it from write/fsync).
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; moved onto ``path`` when the block ends.

    For writers that need a file name (a subprocess such as ffmpeg): the file appears
    under its real name whole or not at all, world-readable; on any error the
    temporary file is removed. The first write of this process into a folder also
    removes the temporary files killed writers left there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.resolve()
    if folder not in _CLEANED:
        _CLEANED.add(folder)
        remove_stale_temp_files(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp",
                               dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; published results should be world-readable.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write(path: Path, data: bytes) -> Path:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npz(
    path: str | os.PathLike, arrays: Mapping[str, Any], header: Mapping[str, Any]
) -> Path:
    """Save named arrays plus a JSON ``header`` (must hold ``kind`` and ``schema_version``)."""
    if "kind" not in header or "schema_version" not in header:
        raise ValueError("header must hold 'kind' and 'schema_version'")
    if HEADER_KEY in arrays:
        raise ValueError(f"array name {HEADER_KEY!r} is reserved")
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for name, value in payload.items():
        if value.dtype == object:
            raise ValueError(f"array {name!r} has dtype object; only numeric arrays are stored")
    payload[HEADER_KEY] = np.frombuffer(json.dumps(dict(header)).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **payload)
    return atomic_write_bytes(path, buf.getvalue())


def array_headers(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array of an ``.npz``, read from the ``.npy`` headers.

    Nothing is allocated: each member's header (``numpy.lib.format``) is read
    and checked against the bytes the archive really holds for it, and the
    total against the machine's available memory (:func:`prefrl.preflight.available_memory`).
    Raises ``FileFormatError`` naming the file and the array for a shape that is
    negative or larger than its data, an object dtype (pickles are never read),
    or arrays that together would not fit in memory.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise FileFormatError(f"{path}: is a folder, not an .npz file")
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = reader(member)
                    offset = member.tell()
                if dtype.hasobject:
                    raise FileFormatError(f"{path}: array {name!r} has dtype object; prefrl "
                                          "files hold numeric arrays only (no pickles)")
                if any(d < 0 for d in shape):
                    raise FileFormatError(f"{path}: array {name!r} claims negative shape {shape}")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if nbytes > info.file_size - offset:
                    raise FileFormatError(
                        f"{path}: array {name!r} claims shape {shape} ({dtype}, "
                        f"{_format_bytes(nbytes)}), but the file holds only "
                        f"{_format_bytes(max(info.file_size - offset, 0))} of data for it "
                        "(corrupt or forged header)")
                out[name] = (tuple(int(d) for d in shape), dtype)
                total += nbytes
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        if isinstance(err, FileFormatError):
            raise
        raise FileFormatError(
            f"{path}: not a readable .npz file (truncated or corrupt?): {err}"
        ) from err
    from prefrl.preflight import MEMORY_FRACTION, available_memory

    available = available_memory()
    if available is not None and total > MEMORY_FRACTION * available:
        raise FileFormatError(
            f"{path}: its arrays need {_format_bytes(total)} of memory, more than "
            f"{MEMORY_FRACTION:.0%} of the {_format_bytes(available)} available")
    return out


def _format_bytes(n: float) -> str:
    from prefrl.preflight import format_bytes

    return format_bytes(n)


def read_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickle), with clear errors for a missing or corrupt file.

    Sizes are checked from the ``.npy`` headers first (:func:`array_headers`).
    """
    path = Path(path)
    array_headers(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise FileFormatError(
            f"{path}: not a readable .npz file (truncated or corrupt?): {err}"
        ) from err


def _parse_header(path: Path, raw: np.ndarray | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{path}: corrupt header: {err}") from err


def load_npz(
    path: str | os.PathLike,
    *,
    kind: str,
    supported_versions: tuple[int, ...] = (1,),
    required: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load and check an ``.npz`` written by :func:`save_npz`.

    Raises ``FileNotFoundError`` for a missing file and ``FileFormatError``,
    naming the file and the problem, for a truncated or non-npz file, a missing
    header, the wrong ``kind``, an unknown schema version or missing arrays.
    """
    path = Path(path)
    arrays = read_npz_arrays(path)
    if HEADER_KEY not in arrays:
        raise FileFormatError(f"{path}: no {HEADER_KEY!r} entry; not a prefrl {kind} file")
    header = _parse_header(path, arrays.pop(HEADER_KEY))
    if not isinstance(header, dict):
        found = "null" if header is None else f"a JSON {type(header).__name__}"
        raise FileFormatError(f"{path}: header is not a JSON object (found {found}); not a "
                              f"prefrl {kind} file")
    if header.get("kind") != kind:
        found = header.get("kind")
        raise FileFormatError(f"{path}: expected a {kind!r} file, found kind {found!r}")
    version = header.get("schema_version")
    if version not in supported_versions:
        raise FileFormatError(
            f"{path}: unknown schema_version {version!r} for {kind!r} "
            f"(this prefrl reads {list(supported_versions)})"
        )
    from prefrl import schema

    try:
        schema.check(kind, header)
    except schema.SchemaError as err:
        raise FileFormatError(f"{path}: {err}") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise FileFormatError(f"{path}: missing array(s) {missing} in {kind!r} file")
    return arrays, header


def read_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` in a prefrl ``.npz`` file's header, or ``None`` if it has none.

    Lets a loader dispatch between file kinds (e.g. a PPO checkpoint and an
    offline policy file) before validating with :func:`load_npz`.
    """
    path = Path(path)
    array_headers(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if HEADER_KEY not in npz.files:
                return None
            raw = npz[HEADER_KEY]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise FileFormatError(
            f"{path}: not a readable .npz file (truncated or corrupt?): {err}"
        ) from err
    header = _parse_header(path, raw)
    kind = header.get("kind") if isinstance(header, dict) else None
    return kind if isinstance(kind, str) else None


def read_task(path: str | os.PathLike) -> dict[str, Any]:
    """``{"task": …, "task_params": …}`` that a prefrl ``.npz`` records ({} for none).

    Looked up at the header's top level (PPO checkpoints, trajectories), in
    ``meta`` (datasets, policy files) and in a reward model's ``extra.fit``,
    so the files that meet in one command can be checked for the same task
    parameters (``prefrl.envs.check_same_params``).
    """
    header = _parse_header(Path(path), read_npz_arrays(path).get(HEADER_KEY))
    if not isinstance(header, dict):
        return {}
    places = [header, header.get("meta") or {}, (header.get("extra") or {}).get("fit") or {}]
    out = {}
    for key in ("task", "task_params"):
        found = [p[key] for p in places if isinstance(p, Mapping) and p.get(key) is not None]
        if found:
            out[key] = found[0]
    return out
