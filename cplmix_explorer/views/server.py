"""What the served app keeps per process rather than per session: the bundled data and demo models every
session shares, the count of live sessions and models, and the memory housekeeping of a long-running server
(garbage collection, glibc's ``malloc_trim`` and arena cap, ``gc.freeze`` of the start-up objects)."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import threading
import weakref
from pathlib import Path

import panel as pn
from anndata import AnnData

from ..analysis import traversal
from ..api import CplMixVAE
from ..data.bundled import DATASETS
from ..data.bundled import load as load_bundled
from ..files import RUN_FILE
from ..workflows.run import load_run

#: Every live ExplorerState and every model a session showed (the load test checks that closed sessions
#: leave none of them behind).
LIVE_STATES: weakref.WeakSet = weakref.WeakSet()
LIVE_MODELS: weakref.WeakSet = weakref.WeakSet()

_cache_lock = threading.Lock()
_bundled_cache: dict[str, AnnData] = {}
_demo_cache: dict[str, CplMixVAE] = {}


def shared_bundled(name: str) -> AnnData:
    """A bundled dataset loaded once per process and shared read-only by all sessions (views never write
    into it; training writes its results into the run folder's own AnnData)."""
    with _cache_lock:
        if name not in _bundled_cache:
            _bundled_cache[name] = load_bundled(name)
        return _bundled_cache[name]


def shared_demo(run_dir: str | os.PathLike) -> CplMixVAE:
    """A shipped demo model (a run folder) loaded once per process onto its bundled data, with its inference
    computed; sessions share it read-only (training and pruning always work on a new model)."""
    key = str(Path(run_dir).resolve())
    with _cache_lock:
        if key not in _demo_cache:
            source = json.loads((Path(run_dir) / RUN_FILE).read_text())["data"]
            data = _bundled_cache.get(source)
            if data is None and source in DATASETS:
                data = _bundled_cache[source] = load_bundled(source)
            model = load_run(run_dir, source=data if data is not None else source)
            model.predict()
            model.cell_map(run_dir=run_dir)  # the shipped map.npy, or computed once for every session
            _demo_cache[key] = model
        return _demo_cache[key]


def is_shared_demo(model: CplMixVAE) -> bool:
    """True for a demo model that every session shows (it is never changed or released by one)."""
    with _cache_lock:
        return any(model is shared for shared in _demo_cache.values())


def release_model_caches(model: CplMixVAE) -> None:
    """Drop what analysis functions cached for a model a session no longer shows, so it can be freed.

    Shared demo models stay."""
    if is_shared_demo(model):
        return
    traversal.forget(model)


def return_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc ``malloc_trim``), so a
    long-running server's resident memory falls again after sessions close. A no-op where unavailable."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc ``mallopt`` parameter number of M_ARENA_MAX.
_M_ARENA_MAX = -8
#: malloc arenas the served app allows (glibc's default is 8 per core): with the session thread pool and the
#: training threads each filling an arena of its own, freed memory stayed spread over many half-empty arenas
#: and the server's memory after sessions closed kept growing (benchmarks/app_load.py).
SERVER_MALLOC_ARENAS = 2
_arenas_limited = False


def limit_malloc_arenas(arenas: int = SERVER_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on, once per process, unless the user set
    ``MALLOC_ARENA_MAX`` (glibc applies that itself). True when the cap was applied; a no-op off glibc."""
    global _arenas_limited
    if _arenas_limited or "MALLOC_ARENA_MAX" in os.environ:
        return False
    _arenas_limited = True
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):
        return False


def let_threads_mark_the_server_busy() -> None:
    """Leave Panel's ``state.busy`` writable for good, so that sessions' callbacks in a thread pool
    (``pn.config.nthreads``, which the app sets) can all mark the server busy and idle.

    Panel writes the flag inside ``edit_readonly``, which lifts every read-only flag of ``pn.state`` and puts
    the saved ones back on leaving. When two sessions' callbacks do that in two threads, the first to leave
    puts the flag back while the second is still writing, whose callback then fails with "Read-only parameter
    'busy' cannot be modified" in the server log. With the flag off there is nothing to put back."""
    busy = pn.state.param["busy"]
    busy.readonly = busy.constant = False


_startup_frozen = False


def freeze_startup_objects() -> None:
    """Move everything alive now (imported modules, the shared demo model and data) out of the garbage
    collector's reach, once per process (``gc.freeze``): full collections then scan only the sessions' own
    objects, a few times faster, and every open or closed page waits less for them."""
    global _startup_frozen
    with _cache_lock:
        if _startup_frozen:
            return
        _startup_frozen = True
    gc.collect()
    gc.freeze()


def live_counts(collect: bool = True) -> tuple[int, int]:
    """(explorer states, models shown by some session) alive, after one garbage collection unless
    ``collect=False`` (the caller has just collected)."""
    if collect:
        gc.collect()
    return len(LIVE_STATES), len(LIVE_MODELS)
