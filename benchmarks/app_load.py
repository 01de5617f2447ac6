"""The served explorer under load (issue 8, item 6): 10 concurrent browser sessions for 5 minutes.

    python benchmarks/app_load.py --sessions 10 --minutes 5 --rounds 2

Starts ``panel serve apps/explorer.py`` on a free loopback port; one warm-up tab does each action once and
closes (the 'warmed' memory: the server's one-off costs paid). Then it opens ``--sessions`` tabs in headless
Chromium. For ``--minutes`` every tab keeps working: it switches tabs (Training, Consensus, Cells,
Traversal), moves the traversal slider, and every third tab starts a short training now and then (they
queue on the shared device). The server's memory is sampled every 5 s. Then all tabs close and, after the
server has destroyed their sessions, memory is sampled again. ``--rounds`` repeats this: memory is flat when
every round ends where the first ended (what a leak would break). At the end one probe tab reports how many
session states and models are still alive. Prints one JSON object (errors, memory, counts); the memory
samples go to ``--out`` as CSV. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from app_server import AppServer, fill_option, launch_browser, open_app, wait_for_text  # noqa: E402

TABS = ["Training", "Consensus", "Cells", "Traversal"]


def act(page, index: int, tick: int) -> str:
    """One user action of tab ``index`` at ``tick``; returns what was done."""
    name = TABS[(index + tick) % len(TABS)]
    done = f"open {name}"
    page.locator(".bk-tab", has_text=name).first.click()
    if name == "Traversal":
        handle = page.locator(".bk-input-group", has=page.locator(".bk-slider-title", has_text="State 1 value")).locator(".noUi-handle")
        if handle.count():
            handle.first.focus()
            handle.first.press("ArrowRight" if tick % 2 else "ArrowLeft")
            done += ", move slider"
    if name == "Training" and index % 3 == 0:
        train = page.get_by_role("button", name="Train", exact=True).first
        if train.is_enabled():
            train.click()
            done += ", train"
    return done


def warm_up(browser, server) -> None:
    """One tab does everything the load does once (a short training, every tab, the slider) and closes:
    what stays in memory afterwards is the server's one-off cost (imports, compiled aggregations, allocator
    pools), not something sessions accumulate; the 'warmed' sample is taken after it."""
    page = open_app(browser, server.url)
    fill_option(page, "steps (--steps)", 200)
    fill_option(page, "n genes (--genes)", 500)
    page.get_by_role("button", name="Train", exact=True).first.click()
    wait_for_text(page, "trained in this session", timeout_ms=600_000)
    for tick in range(len(TABS)):
        act(page, 1, tick)  # tab 1 does not train again
        time.sleep(2)
    close_and_wait([page], server)


def close_and_wait(pages, server) -> None:
    """Close ``pages`` and wait (at most 2 min) until the server has destroyed their sessions, then 5 s more."""
    closed_before = server.count("closed; explorer sessions alive")
    for page in pages:
        page.close()
    wait_until = time.perf_counter() + 120
    while server.count("closed; explorer sessions alive") < closed_before + len(pages) and time.perf_counter() < wait_until:
        time.sleep(1)
    time.sleep(5)


def run_round(browser, server, args, sample, page_errors: list[str], error_log: list[dict]) -> int:
    """Open ``args.sessions`` tabs, keep them busy for ``args.minutes``, close them and wait until the server
    has destroyed their sessions; returns the number of actions done."""
    pages, last_action = [], {}

    def record(index: int, kind: str, message: str) -> None:
        if kind != "console":  # console errors accompany page errors; logged for context, not counted
            page_errors.append(message)
        error_log.append({"seconds": round(time.perf_counter() - args.begin, 1), "tab": index, "kind": kind,
                          "after": last_action.get(index, "opening"), "message": message[:500]})

    for index in range(args.sessions):
        page = open_app(browser, server.url)
        page.on("pageerror", lambda error, index=index: record(index, "pageerror", f"{error}\n{error.stack or ''}"))
        page.on("console", lambda message, index=index: message.type == "error" and record(index, "console", message.text))
        if index % 3 == 0:  # short real trainings
            fill_option(page, "steps (--steps)", 200)
            fill_option(page, "n genes (--genes)", 500)
        pages.append(page)
    sample("sessions open")
    deadline, tick, last_sample = time.perf_counter() + 60 * args.minutes, 0, 0.0
    while time.perf_counter() < deadline:
        for index, page in enumerate(pages):
            try:
                last_action[index] = act(page, index, tick)
            except Exception as error:  # a stuck page is a finding, not a crash of the benchmark
                record(index, "action", f"tab {index}: {type(error).__name__}: {str(error).splitlines()[0]}")
        tick += 1
        if time.perf_counter() - last_sample >= 5:
            sample("load")
            last_sample = time.perf_counter()
    close_and_wait(pages, server)
    sample("after close")
    return tick * args.sessions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=5.0, help="busy minutes per round")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of open / load / close: memory is flat when later rounds end where the first did")
    parser.add_argument("--session-lifetime-ms", type=int, default=15000,
                        help="panel serve --unused-session-lifetime (Bokeh's default: 15000 ms, what a user's server has)")
    parser.add_argument("--out", default="app_load_memory.csv")
    parser.add_argument("--errors-out", default="app_load_errors.json", help="every page error with its tab, time and the action before it")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="cplmix-load-"))
    samples: list[tuple[float, int, str, float]] = []
    page_errors: list[str] = []
    error_log: list[dict] = []
    actions = 0
    with AppServer(["--runs-dir", str(folder / "runs"), "--data-dir", str(folder)], folder / "server.log",
                   session_lifetime_ms=args.session_lifetime_ms) as server:
        server.wait_ready()
        begin = args.begin = time.perf_counter()
        current_round = 0

        def sample(phase: str) -> None:
            samples.append((round(time.perf_counter() - begin, 1), current_round, phase, round(server.rss_mb(), 1)))

        sample("started")
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            probe = open_app(browser, server.url)
            baseline_states, baseline_models = server.alive_counts()[-1], server.alive_models()[-1]
            probe.close()
            warm_up(browser, server)
            sample("warmed")
            for current_round in range(1, args.rounds + 1):
                actions += run_round(browser, server, args, sample, page_errors, error_log)
            probe = open_app(browser, server.url)
            states_after, models_after = server.alive_counts()[-1], server.alive_models()[-1]
            probe.close()
            browser.close()
        server_errors = server.errors()
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seconds", "round", "phase", "server_rss_mb"])
        writer.writerows(samples)
    Path(args.errors_out).write_text(json.dumps(error_log, indent=1))

    def phase_rss(phase: str, which) -> list[float]:
        return [which([rss for _, r, p, rss in samples if r == n and p == phase] or [float("nan")])
                for n in range(1, args.rounds + 1)]

    after_close = phase_rss("after close", lambda values: values[0])
    warmed = next(rss for _, _, phase, rss in samples if phase == "warmed")
    print(json.dumps({
        "benchmark": "app_load",
        "sessions": args.sessions, "minutes_per_round": args.minutes, "rounds": args.rounds, "actions": actions,
        "server_errors": len(server_errors), "page_errors": len(page_errors),
        "errors": [line.splitlines()[0] for line in (server_errors + page_errors)[:10]],
        "rss_mb": {
            "started": samples[0][3],
            "warmed": warmed,
            "sessions_open": phase_rss("sessions open", lambda values: values[0]),
            "load_max": phase_rss("load", max),
            "after_close": after_close,
        },
        # growth of the after-close memory from the first round to the last: ~0 when nothing accumulates
        "after_close_growth_mb": round(after_close[-1] - after_close[0], 1),
        # what each round left behind, above the server after one warm-up session had come and gone
        "after_close_above_warmed_mb": [round(v - warmed, 1) for v in after_close],
        "alive_before": {"states": baseline_states, "models": baseline_models},
        "alive_after_close": {"states": states_after, "models": models_after},
        "memory_samples_csv": str(Path(args.out).resolve()),
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
