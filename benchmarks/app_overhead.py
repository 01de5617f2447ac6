"""Training speed with the app's live monitor attached vs without (issue 5's bar: < 10 % slower).

    python benchmarks/app_overhead.py --steps 2000 --repeats 2 [--device cuda]

Without: ``cplmix train`` (no progress bar) in a subprocess. With: the same options typed into the served
app (``panel serve apps/explorer.py``) in headless Chromium, Train clicked, the Training tab open so the
monitor streams every refresh to the browser. Both read the run's own ``metrics.json`` (steps per second
of the whole run, evaluations included) and run with the same thread count, alternating. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from app_server import REPOSITORY, AppServer, fill_option, launch_browser, open_app  # noqa: E402

#: form label -> (CLI flag, value)
OPTIONS = {
    "n types (--types)": ("--types", "10"),
    "n arms (--arms)": ("--arms", "2"),
    "state dim (--state-dim)": ("--state-dim", "2"),
    "n genes (--genes)": ("--genes", "2000"),
    "batch size (--batch-size)": ("--batch-size", "256"),
    "seed (--seed)": ("--seed", "0"),
}


def without_app(steps: int, device: str, threads: int, folder: Path) -> float:
    out = folder / f"cli-{time.time_ns()}"
    command = [sys.executable, "-m", "cplmix_explorer.cli", "train", "zeisel2015", "--out", str(out), "--steps", str(steps),
               "--device", device, "--quiet"]
    for flag, value in OPTIONS.values():
        command += [flag, value]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPOSITORY)}
    subprocess.run(command, check=True, env=env, cwd=REPOSITORY)
    return json.loads((out / "metrics.json").read_text())["steps_per_second"]


def browser_cpu_seconds() -> float:
    """CPU time used so far by the Chromium processes on this machine (user + system, seconds)."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["name"]):
        if "chrom" in (process.info["name"] or "").lower():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


def with_app(page, server_runs: Path, steps: int, device: str) -> tuple[float, float]:
    """Steps per second of a training started from the page, and the browser's CPU seconds per second of it."""
    before = set(server_runs.glob("*")) if server_runs.exists() else set()
    for label, (_flag, value) in OPTIONS.items():
        fill_option(page, label, value)
    fill_option(page, "steps (--steps)", steps)
    page.locator(".bk-input-group", has_text="device (--device)").locator("select").first.select_option(device)
    time.sleep(1.0)
    browser_cpu, started = browser_cpu_seconds(), time.monotonic()
    page.get_by_role("button", name="Train", exact=True).first.click()
    # the page may still say "training completed" from the previous repeat: wait for this run's own record
    deadline = time.monotonic() + 3600
    while not (finished := [run for run in set(server_runs.glob("*")) - before if (run / "metrics.json").exists()]):
        if time.monotonic() > deadline:
            raise TimeoutError("the training started from the page did not finish within an hour")
        time.sleep(0.5)
    browser_share = (browser_cpu_seconds() - browser_cpu) / (time.monotonic() - started)
    return json.loads((finished[0] / "metrics.json").read_text())["steps_per_second"], browser_share


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="cplmix-overhead-"))
    runs = folder / "runs"
    plain, monitored, browser_share = [], [], []
    with AppServer(["--runs-dir", str(runs), "--data-dir", str(folder)], folder / "server.log", threads=args.threads) as server:
        server.wait_ready()
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = open_app(browser, server.url)
            for _ in range(args.repeats):
                plain.append(without_app(args.steps, args.device, args.threads, folder))
                steps_per_second, share = with_app(page, runs, args.steps, args.device)
                monitored.append(steps_per_second)
                browser_share.append(share)
            browser.close()
    slowdown = 1.0 - statistics.mean(monitored) / statistics.mean(plain)
    print(json.dumps({
        "benchmark": "app_overhead",
        "steps": args.steps, "device": args.device, "threads": args.threads,
        "steps_per_second_without_app": [round(v, 2) for v in plain],
        "steps_per_second_with_app": [round(v, 2) for v in monitored],
        "slowdown_fraction": round(slowdown, 4),
        # the browser shares this machine's cores with training: its CPU seconds per second of training
        "browser_cpu_cores_busy": [round(v, 2) for v in browser_share],
        "cpu_cores": os.cpu_count(),
        "bar_fraction": 0.10,
        "meets_bar": slowdown < 0.10,
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
