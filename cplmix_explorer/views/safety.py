"""What a served explorer accepts from a browser: server paths inside one allowed folder, run folders inside the
runs folder (not other sessions' ones), uploads of bounded size that pass the CLI's validation, and file names
safe to offer for download.

Plain Python (no Panel), so the rules are tested directly.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

from anndata import AnnData

from ..data.io import read_data
from ..data.validate import validate_anndata
from ..errors import CplmixError

#: Default upload limit; a served app sets its own (``--max-upload-mb`` / ``CPLMIX_MAX_UPLOAD_MB``).
DEFAULT_MAX_UPLOAD_MB = 200
#: The answer to a Load with no path typed.
EMPTY_PATH_MESSAGE = "type the path of an .h5ad file inside the data folder"


def resolve_data_path(text: str, data_dir: str | os.PathLike | None, *, private_dirs: tuple[Path, ...] = ()) -> Path:
    """The ``.h5ad`` file named by ``text`` (absolute, or relative to ``data_dir``) if it lies inside
    ``data_dir``; anything else raises :class:`CplmixError` with a one-line reason.

    Refused: no allowed folder configured, ``..`` escapes, absolute paths elsewhere, symbolic links that
    lead outside the folder, paths under ``private_dirs`` (other sessions' run folders), folders, other
    file types and missing files.
    """
    if data_dir is None:
        raise CplmixError("reading files on the server is disabled (start the app with --data-dir to allow one folder)")
    text = (text or "").strip()
    if not text:
        raise CplmixError(EMPTY_PATH_MESSAGE)
    if "\x00" in text:
        raise CplmixError("the path contains a NUL character")
    root = Path(data_dir).expanduser().resolve()
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    # resolve() follows every symbolic link, so a link inside the folder that points outside is caught here
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise CplmixError(f"'{text}' is outside the allowed data folder {root}")
    for private in private_dirs:
        if resolved.is_relative_to(Path(private).resolve()):
            raise CplmixError(f"'{text}' is in the app's run folder, which is private to each session")
    if not resolved.exists():
        raise CplmixError(f"no such file in the data folder: '{text}'")
    if resolved.is_dir():
        raise CplmixError(f"'{text}' is a folder, not an .h5ad file")
    if resolved.suffix.lower() != ".h5ad":
        raise CplmixError(f"'{text}' is not an .h5ad file (AnnData's HDF5 format)")
    return resolved


def list_data_files(data_dir: str | os.PathLike | None, limit: int = 200) -> list[str]:
    """``.h5ad`` files under ``data_dir`` (relative paths, sorted, at most ``limit``), skipping links that
    lead outside it; [] when reading server files is disabled."""
    if data_dir is None:
        return []
    root = Path(data_dir).expanduser().resolve()
    found: list[str] = []
    for current, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if not name.lower().endswith(".h5ad"):
                continue
            path = Path(current) / name
            if path.resolve().is_relative_to(root):
                found.append(str(path.relative_to(root)))
            if len(found) >= limit:
                return found
    return found


#: Run folders the app writes: ``STAMP-KIND-SESSION-UNIQUE`` (:func:`app_run_name`); SESSION names the session that
#: owns it, and other sessions neither see nor open it (it may hold that session's uploaded data).
_APP_RUN_NAME = re.compile(r"^\d{8}-\d{6}-(?:train|prune)-(?P<session>[0-9a-f]{12})-[0-9a-f]{6}$")


def app_run_name(kind: str, session_id: str, stamp: str, unique: str) -> str:
    """The folder name of a run started in the app by session ``session_id``."""
    return f"{stamp}-{kind}-{session_id}-{unique}"


def _other_sessions_run(name: str, session_id: str | None) -> bool:
    match = _APP_RUN_NAME.match(name)
    return match is not None and match.group("session") != session_id


def list_run_folders(runs_dir: str | os.PathLike | None, session_id: str | None = None, limit: int = 200) -> list[str]:
    """Run folders (holding a ``run.json``) directly inside ``runs_dir``, newest first, by name: runs of the
    command line (``cplmix train --out RUNS_DIR/NAME``) and this session's runs, not other sessions' runs nor
    links that lead outside the folder. [] when there is no runs folder."""
    if runs_dir is None:
        return []
    root = Path(runs_dir).expanduser().resolve()
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or _other_sessions_run(entry.name, session_id):
            continue
        try:
            resolved = entry.resolve()
            if resolved.is_relative_to(root) and resolved.is_dir() and (resolved / "run.json").is_file():
                found.append((resolved.stat().st_mtime, entry.name))
        except OSError:
            continue
    found.sort(key=lambda item: (-item[0], item[1]))
    return [name for _, name in found[:limit]]


def resolve_run_folder(name: str, runs_dir: str | os.PathLike | None, session_id: str | None = None) -> Path:
    """The run folder ``name`` directly inside ``runs_dir``; anything else (paths, ``..``, links leading out,
    other sessions' runs, folders without ``run.json``) raises :class:`CplmixError` with a one-line reason."""
    if runs_dir is None:
        raise CplmixError("this explorer has no runs folder (start it with --runs-dir)")
    name = (name or "").strip()
    if not name:
        raise CplmixError("choose a run folder")
    if "\x00" in name or "/" in name or "\\" in name or name in (".", ".."):
        raise CplmixError(f"'{name}' is not the name of a folder in the runs folder")
    root = Path(runs_dir).expanduser().resolve()
    resolved = (root / name).resolve()
    if not resolved.is_relative_to(root):
        raise CplmixError(f"'{name}' is outside the runs folder {root}")
    if _other_sessions_run(name, session_id):
        raise CplmixError(f"'{name}' is another session's run, private to it")
    if not resolved.is_dir():
        raise CplmixError(f"no such run folder: '{name}'")
    if not (resolved / "run.json").is_file():
        raise CplmixError(f"'{name}' is not a run folder (it has no run.json)")
    return resolved

def sanitize_filename(name: str, default: str = "export", max_length: int = 120) -> str:
    """A file name safe on every OS and in a Content-Disposition header: letters, digits, ``-``, ``_``, ``.``.

    Path separators, ``..``, control characters and leading dots are removed, so the name cannot leave the
    download folder or hide itself.
    """
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"\.{2,}", ".", text).strip("._-")
    text = text[:max_length].strip("._-")
    return text or default


def read_upload(filename: str, payload: bytes, max_bytes: int, labels: str | None = None) -> AnnData:
    """An uploaded ``.h5ad`` (bytes) as AnnData, validated exactly as the CLI validates its input.

    Too large, wrong extension, unreadable or invalid data raise :class:`CplmixError`. The bytes are
    written to a private temporary file that is removed afterwards; the data is read into memory.
    """
    shown = sanitize_filename(filename, default="upload")
    if len(payload) > max_bytes:
        raise CplmixError(
            f"upload '{shown}' is {len(payload) / 2**20:.1f} MB, over the limit of {max_bytes / 2**20:.0f} MB"
        )
    if not str(filename).lower().endswith(".h5ad"):
        raise CplmixError(f"upload '{shown}' is not an .h5ad file (AnnData's HDF5 format)")
    if not _has_hdf5_signature(payload):
        raise CplmixError(f"upload '{shown}' is not an HDF5 file, so not a valid .h5ad")
    handle, temporary = tempfile.mkstemp(prefix="cplmix-upload-", suffix=".h5ad")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        try:
            adata = read_data(temporary)
            adata = adata.to_memory() if adata.isbacked else adata
        except CplmixError as error:
            raise CplmixError(str(error).replace(temporary, shown)) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    validate_anndata(adata, labels=labels)
    return adata


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _has_hdf5_signature(payload: bytes) -> bool:
    """HDF5's superblock signature at offset 0, 512, 1024, 2048, ... (a file may start with a user block)."""
    offset = 0
    while offset + len(_HDF5_SIGNATURE) <= len(payload):
        if payload[offset : offset + len(_HDF5_SIGNATURE)] == _HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False
