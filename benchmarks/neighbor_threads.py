"""What one thread costs the approximate neighbor search (the CPU search above 50,000 cells), and that it is
what makes the graph the same on every machine.

    python benchmarks/neighbor_threads.py --cells 100000 300000

Per size: seconds of pynndescent's search (15 neighbors of N cells in 50 dimensions, a mixture of 120 Gaussian
groups, seed 0) with one numba thread (the engine's choice) and with all of numba's threads, and whether the two
graphs are the same. Writes benchmarks/results/neighbor_threads.{json,md} (or --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402


def search(points: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    from pynndescent import NNDescent

    started = time.perf_counter()
    index = NNDescent(points, n_neighbors=16, metric="euclidean", random_state=0, low_memory=True,
                      compressed=True, verbose=False, n_jobs=threads)
    found = index.neighbor_graph[0]
    return found, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", type=int, default=[100_000, 300_000])
    parser.add_argument("--out", type=Path, default=RESULTS / "neighbor_threads")
    args = parser.parse_args()
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    rng = np.random.default_rng(0)
    search(rng.normal(size=(2000, 50)).astype(np.float32), 1)  # numba compiles here, not in the timings
    rows = []
    for n in args.cells:
        centers = rng.normal(size=(120, 50)).astype(np.float32) * 2
        points = (centers[rng.integers(0, 120, n)] + rng.normal(size=(n, 50))).astype(np.float32)
        one, one_s = search(points, 1)
        every, every_s = search(points, most)
        rows.append({"cells": n, "one_thread_s": one_s, "all_threads": most, "all_threads_s": every_s,
                     "same_graph": bool(np.array_equal(one, every))})
        print(rows[-1], flush=True)
    info = machine()
    lines = ["# The approximate neighbor search: one thread against all", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}.", "",
             "| cells | one thread (s) | all threads (s) | threads | same graph |", "|---|---|---|---|---|"]
    lines += [f"| {r['cells']:,} | {r['one_thread_s']:.1f} | {r['all_threads_s']:.1f} | {r['all_threads']} | "
              f"{'yes' if r['same_graph'] else 'no'} |" for r in rows]
    write_results(args.out, {"machine": info, "rows": rows}, lines)


if __name__ == "__main__":
    main()
