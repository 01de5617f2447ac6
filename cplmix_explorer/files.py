"""Files that appear complete or not at all: every output of a run, an export or a checkpoint is written
to a temporary file in the same folder and renamed over its destination."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: The files of a run folder besides its checkpoints (cplmix_explorer.workflows.run describes them).
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
RESULT_FILE = "result.h5ad"


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
