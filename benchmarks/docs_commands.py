"""Runs the commands the README and docs/*.md show, as a user would type them, and tables what happened.

Each page runs in its own scratch folder, in page order, so that ``runs/zeisel`` made by one command is there
for the next on the same page; the folder holds copies of the repository's apps/, examples/, models/, docs/,
.ci/ and benchmarks/*.py (copies, so that nothing a command writes lands in the repository) and a link to
.venv/ when there is one. The commands are found by ``page_commands`` of tests/test_docs.py.

- A run folder a page uses but does not make (``runs/zeisel`` in docs/traversal.md) is made first by the first
  command of any page that makes it (README's ``cplmix train ... --out runs/zeisel``), once, then copied.
- A file the user brings (``my.h5ad``, ``data.h5ad``) is a small stand-in from the project's own simulator,
  unless an earlier command of the page makes it (``/tmp/with_empty_cells.h5ad``, ``my_genes.txt``).
- ``python benchmarks/*.py`` lines are recipes of recorded results (hours): not run unless they are a
  ``--quick`` form. ``--device cuda`` lines need CUDA; ``torchrun`` lines need several GPUs or machines.
- A ``cplmix train`` still running after ``--max-seconds`` gets SIGINT, as a user pressing Ctrl-C: it then keeps
  its checkpoint and exits 130, "stopped by Ctrl-C as documented" (docs/reliability.md); any other command
  gets SIGINT after ``--other-max-seconds``.
- ``panel serve apps/explorer.py ...`` starts on a free port; the check is http://127.0.0.1:PORT/explorer
  answering 200, then the server gets SIGINT.

``--quick`` runs nothing: it checks that the CLI parses each ``cplmix`` line (and prints its ``--help``) and
that the scripts, notebooks and apps the lines name exist (a few seconds; tests/test_docs.py runs it).

    python benchmarks/docs_commands.py                    # every page (about half an hour on 2 cores)
    python benchmarks/docs_commands.py --pages README.md docs/cli.md --max-seconds 120
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "benchmarks" / "results"
sys.path.insert(0, str(REPOSITORY / "tests"))
from test_docs import PAGES, page_commands  # noqa: E402  the one extractor of the pages' commands

COPIED = ("apps", "examples", "models", "docs", ".ci")
RUN_FOLDER = re.compile(r"(?<![\w/.-])(runs/[\w.-]+)")
BROUGHT_FILE = re.compile(r"(?<![\w.-])((?:/tmp/)?[\w.-]+\.(?:h5ad|txt))\b")
# Files a user brings, and the stand-in made for them when the page does not show how to make them.
STAND_INS = {
    "my.h5ad": dict(n_cells=3000, n_genes=4000, n_types=20, n_classes=4, seed=0),
    "data.h5ad": dict(n_cells=5000, n_genes=2000, n_types=40, n_classes=4, seed=3),
}
# --small: the 10^5-cell file of docs/scale.md with 10^4 cells (whose names have one digit fewer)
SMALL = {"n_cells=100_000": "n_cells=10_000", "--cell sim-cell-000000": "--cell sim-cell-00000"}
OUTPUT = re.compile(r"--out[= ](\S+)")


@dataclass
class Outcome:
    page: str
    command: str
    status: str  # passed | failed | stopped (Ctrl-C as documented) | skipped | set-up
    exit_code: int | None = None
    seconds: float | None = None
    checked: str = ""
    note: str = ""
    output_tail: str = field(default="", repr=False)


def strip_comment(command: str) -> tuple[str, str]:
    """(the command, its trailing ``# comment``); a heredoc keeps its body."""
    first, _, rest = command.partition("\n")
    shell, _, comment = first.partition(" #")
    return (shell.rstrip() + ("\n" + rest if rest else "")), comment.strip()


def last_lines(text: str, limit: int = 1500) -> str:
    """The end of a command's output with progress bars collapsed to their last state."""
    lines = [line.split("\r")[-1] for line in text.splitlines()]
    return "\n".join(line for line in lines if line.strip())[-limit:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_in_a_terminal() -> None:
    """Ctrl-C works in the child as in a terminal, even when this script was started in the background (a
    non-interactive shell starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def skip_reason(command: str, *, cuda: bool) -> str | None:
    if command.startswith("bash .ci/setup") and "pytest" in command:
        return "the whole test suite: not run here (2 shared cores); the set-up part ran as this run's own set-up"
    if command.startswith("torchrun"):
        return "torchrun on several GPUs or machines: not run (one CPU machine)"
    if re.match(r"python benchmarks/\S+\.py", command) and "--quick" not in command:
        return "benchmark recipe, not run (its recorded results are in benchmarks/results/)"
    if "--device cuda" in command and not cuda:
        return "needs CUDA (torch.cuda is not available here)"
    return None


class PageRun:
    """The commands of one page in one scratch folder."""

    def __init__(self, page: Path, scratch: Path, args, shared: Path, makers: dict[str, str], env: dict):
        self.page, self.args, self.shared, self.makers, self.env = page, args, shared, makers, env
        self.name = str(page.relative_to(REPOSITORY))
        self.folder = scratch / self.name.replace("/", "_").removesuffix(".md")
        self.logs = self.folder / ".logs"
        self.outcomes: list[Outcome] = []
        self.seen: list[str] = []
        self.stopped: set[str] = set()

    def prepare_folder(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.logs.mkdir(parents=True)
        for name in COPIED:
            if (REPOSITORY / name).exists():
                shutil.copytree(REPOSITORY / name, self.folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        (self.folder / "benchmarks" / "results").mkdir(parents=True)
        for script in (REPOSITORY / "benchmarks").glob("*.py"):
            shutil.copy2(script, self.folder / "benchmarks" / script.name)
        if (REPOSITORY / ".venv").exists():
            (self.folder / ".venv").symlink_to(REPOSITORY / ".venv")

    # -- what a command needs ----------------------------------------------------------------------------
    def ensure_run_folders(self, command: str) -> None:
        """Make (once, then copy) a run folder the command reads that no earlier command of the page made."""
        for run in RUN_FOLDER.findall(command):
            makes = re.compile(rf"--out {re.escape(run)}(?![\w.-])")
            made_here = bool(makes.search(command)) or any(makes.search(earlier) for earlier in self.seen)
            if made_here or (self.folder / run).exists() or run not in self.makers:
                continue
            cached = self.shared / run
            if not cached.exists():
                maker = self.makers[run]
                outcome = self.execute(maker, self.shared, log_name=f"prerequisite-{run.replace('/', '_')}")
                outcome.page = f"(set-up for {self.name})"
                outcome.status = "set-up" if outcome.exit_code == 0 else "failed"
                outcome.note = f"{run} is used but not made on {self.name}; made by the first page command that makes it"
                self.outcomes.append(outcome)
                self.progress(outcome)
            if cached.exists():
                shutil.copytree(cached, self.folder / run)

    def ensure_brought_files(self, command: str) -> str:
        """Stand-ins for the files a user brings; returns a note for the table."""
        notes = []
        for name in BROUGHT_FILE.findall(command):
            path = Path(name) if name.startswith("/") else self.folder / name
            if path.exists() or any(name in earlier for earlier in self.seen) or name not in STAND_INS:
                continue
            from cplmix_explorer.datasets import simulate

            options = STAND_INS[name]
            simulate(**options).write_h5ad(path)
            notes.append(f"{name}: stand-in simulate({', '.join(f'{k}={v}' for k, v in options.items())})")
        return "; ".join(notes)

    # -- running -----------------------------------------------------------------------------------------
    def limit(self, shell: str) -> float:
        """--max-seconds for a training run (it stops gracefully on Ctrl-C, keeping its checkpoint), the
        longer --other-max-seconds for the rest (a stopped augmenter or notebook leaves nothing to go on with)."""
        training = re.match(r"^(?:[A-Z_]+=\S+ )*cplmix train ", shell)
        return self.args.max_seconds if training else self.args.other_max_seconds

    def execute(self, command: str, cwd: Path, *, log_name: str) -> Outcome:
        shell, _ = strip_comment(command)
        started = time.perf_counter()
        log = self.logs / f"{log_name}.txt"
        with open(log, "w") as out:
            process = subprocess.Popen(["bash", "-c", shell], cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=as_in_a_terminal)
            interrupted = False
            limit = self.limit(shell)
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                interrupted = True
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the foreground group
                try:
                    code = process.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    code = process.wait()
        seconds = time.perf_counter() - started
        text = log.read_text(errors="replace")
        outcome = Outcome(self.name, command, "passed" if code == 0 else "failed", code, round(seconds, 1),
                          output_tail=last_lines(text))
        if interrupted:
            outcome.note = f"SIGINT (Ctrl-C) after {limit:g} s"
            if code == 130 and "checkpoint kept" in text:
                outcome.status = "stopped"
                outcome.checked = "exit 130 with 'checkpoint kept ... continue with --resume': stopped by Ctrl-C as documented"
        return outcome

    def serve(self, command: str) -> Outcome:
        """``panel serve apps/explorer.py ...`` on a free port until /explorer answers 200, then Ctrl-C."""
        shell, _ = strip_comment(command)
        shell = shell.replace("bash .ci/setup && ", "")
        if not (self.folder / ".venv").exists():
            shell = shell.replace(".venv/bin/panel", "panel")
        port = free_port()
        shell = shell.replace("apps/explorer.py", f"apps/explorer.py --port {port}", 1)
        note = []
        for absolute in re.findall(r"(/data/[\w/]+)", shell):  # the page's example folders: stand-ins here
            local = "stand-in" + absolute
            (self.folder / local).mkdir(parents=True, exist_ok=True)
            shell = shell.replace(absolute, local)
            note.append(f"{absolute} -> ./{local}")
        if any("h5ad" in n for n in note):
            from cplmix_explorer.datasets import simulate

            simulate(n_cells=500, n_genes=1000, n_types=4, seed=0).write_h5ad(self.folder / "stand-in/data/h5ad/small.h5ad")
            note.append("a 500-cell simulated .h5ad in the data folder")
        url = f"http://127.0.0.1:{port}/explorer"
        log = self.logs / f"{len(self.outcomes):02d}-serve.txt"
        started = time.perf_counter()
        answered = None
        with open(log, "w") as out:
            process = subprocess.Popen(["bash", "-c", f"exec {shell}"], cwd=self.folder, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=as_in_a_terminal)
            deadline = started + self.args.other_max_seconds
            while time.perf_counter() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(url, timeout=60) as response:
                        answered = response.status
                        response.read()
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                    if isinstance(error, urllib.error.HTTPError):
                        answered = error.code
                        break
                    time.sleep(1)
            seconds = time.perf_counter() - started
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        text = log.read_text(errors="replace")
        outcome = Outcome(self.name, command, "passed" if answered == 200 else "failed", 0 if answered == 200 else
                          (process.returncode if answered is None else answered), round(seconds, 1),
                          checked=f"{url} answered {answered if answered is not None else 'nothing'} "
                                  f"(port {port} added); stopped with SIGINT",
                          note="; ".join(note), output_tail=last_lines(text))
        return outcome

    def check(self, outcome: Outcome, command: str) -> None:
        """What a user would look at after the command: the files it names, its JSON, the value its comment shows."""
        if outcome.status in ("stopped", "skipped"):
            return
        shell, comment = strip_comment(command)
        text = outcome.output_tail
        log = (self.logs / f"{len(self.outcomes):02d}.txt")
        full = log.read_text(errors="replace") if log.exists() else text
        checks, problems = [], []
        expect_refusal = "refused" in comment
        if expect_refusal:
            checks.append("refused: exit 2 and one 'cplmix: error:' line naming the flag")
            errors = [line for line in full.splitlines() if line.startswith("cplmix: error:")]
            if outcome.exit_code == 2 and len(errors) == 1 and "Traceback" not in full:
                outcome.status = "passed"
                checks.append(f"said: {errors[0][:160]}")
            else:
                problems.append(f"expected a refusal, got exit {outcome.exit_code}")
                outcome.status = "failed"
        elif outcome.exit_code != 0:
            outcome.checked = "exit code"
            return
        output = OUTPUT.search(shell)
        if output and not expect_refusal and not shell.startswith("python"):
            target = self.folder / output.group(1)
            if shell.startswith("cplmix train"):
                target = target / "run.json"
            exists = target.exists() and (target.is_dir() or target.stat().st_size > 0)
            checks.append(f"{target.relative_to(self.folder)} written")
            if not exists:
                problems.append(f"{target.relative_to(self.folder)} missing")
        if not expect_refusal and (" --json" in shell or shell.startswith("cplmix evaluate")
                                   or shell.startswith("cplmix train") and "--quiet" not in shell):
            if "| head" not in shell:
                body = "\n".join(line.split("\r")[-1] for line in full.splitlines())
                start = re.search(r"^\{", body, re.MULTILINE)
                try:
                    value = json.JSONDecoder().raw_decode(body[start.start():])[0] if start else None
                except ValueError:
                    value = None
                checks.append("prints a JSON object")
                if not isinstance(value, dict):
                    problems.append("no JSON object in the output")
                elif (k := re.search(r"\bk = (\d+)", comment)) and value.get("k") != int(k.group(1)):
                    problems.append(f"k = {value.get('k')}, the page says {k.group(1)}")
                elif k:
                    checks.append(f"k = {k.group(1)} as the page says")
        if (number := re.match(r"^(\d+)\b", comment)) and not expect_refusal:
            checks.append(f"prints {number.group(1)} as the page says")
            if not re.search(rf"(?<![\w.]){number.group(1)}(?![\w.])", full):
                problems.append(f"{number.group(1)} not in the output")
        if shell.startswith("ls "):
            names = [n for n in comment.split() if "." in n]
            checks.append("lists " + " ".join(names))
            problems += [f"{n} not listed" for n in names if n not in full]
        if "--resume" in shell and "goes on to step" in comment:
            checks.append("resumed from the checkpoint")
        if problems:
            outcome.status = "failed"
        outcome.checked = "; ".join(checks + problems) or "exit code 0"

    def progress(self, outcome: Outcome) -> None:
        code = "-" if outcome.exit_code is None else outcome.exit_code
        seconds = "" if outcome.seconds is None else f"{outcome.seconds:7.1f}s"
        first = outcome.command.splitlines()[0]
        print(f"[{outcome.status:>7}] {code:>4} {seconds:>8}  {outcome.page}: {first[:110]}", flush=True)

    def run(self, commands: list[str], cuda: bool) -> list[Outcome]:
        self.prepare_folder()
        for command in commands:
            shell, _ = strip_comment(command)
            reason = skip_reason(shell, cuda=cuda)
            if reason:
                outcome = Outcome(self.name, command, "skipped", note=reason)
            elif "panel serve" in shell:
                try:
                    outcome = self.serve(command)
                except Exception as error:  # this script's own set-up failed: a row, not the end of the run
                    outcome = Outcome(self.name, command, "failed", note=f"docs_commands.py failed: {error!r}")
            else:
                shown, notes = command, []
                for page_text, small_text in SMALL.items() if self.args.small else ():
                    if page_text in command:
                        command = command.replace(page_text, small_text)
                        notes.append(f"--small: ran with {small_text} (10^4 cells instead of the page's 10^5; file name kept)")
                self.ensure_run_folders(shell)
                notes.append(self.ensure_brought_files(shell))
                outcome = self.execute(command, self.folder, log_name=f"{len(self.outcomes):02d}")
                outcome.command = shown
                outcome.note = "; ".join(n for n in (*notes, outcome.note) if n)
                self.check(outcome, command)
            if outcome.status != "skipped":  # a skipped line (torchrun ... data.h5ad) makes nothing
                self.seen.append(shell)
            self.outcomes.append(outcome)
            self.progress(outcome)
        return self.outcomes


# -- --quick: parse and --help only ----------------------------------------------------------------------
def quick_check(page: str, command: str) -> Outcome:
    from cplmix_explorer.cli import build_parser
    from cplmix_explorer.errors import CplmixError

    shell, _ = strip_comment(command)
    first = shell.splitlines()[0]
    words = shlex.split(first.split(" | ")[0].split(" && ")[-1]) if "<<" not in first else first.split()
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    if words and words[0] == "taskset":
        words = words[3:]
    outcome = Outcome(page, command, "passed", 0, 0.0)
    if words and words[0] == "cplmix":
        arguments = words[1:]
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(arguments)
            subcommand = [a for a in arguments if not a.startswith("-")][:1]
            if arguments[:1] == ["augmenter"]:
                subcommand = arguments[:2]
            with contextlib.redirect_stdout(io.StringIO()) as shown, contextlib.suppress(SystemExit):
                build_parser().parse_args([*subcommand, "--help"])
            outcome.checked = f"parsed; 'cplmix {' '.join(subcommand)} --help' prints {len(shown.getvalue().splitlines())} lines"
        except CplmixError as error:
            outcome.status, outcome.exit_code, outcome.checked = "failed", 2, f"refused by the CLI: {error}"
        except SystemExit as exit:
            if exit.code == 0 and "--help" in arguments:
                outcome.checked = "--help"
            else:
                outcome.status, outcome.exit_code, outcome.checked = "failed", exit.code, "refused by the CLI"
        return outcome
    named = [w for w in words if re.match(r"^(apps|examples|models|benchmarks|docs)/\S+\.(py|ipynb)$", w)]
    missing = [n for n in named if not (REPOSITORY / n).exists()]
    if missing:
        outcome.status, outcome.exit_code = "failed", 1
    outcome.checked = ("missing: " + ", ".join(missing)) if missing else (
        ("exists: " + ", ".join(named)) if named else "not a cplmix line: nothing to parse")
    return outcome


# -- the table ---------------------------------------------------------------------------------------------
def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def page_of(outcome: Outcome) -> str:
    return outcome.page.removeprefix("(set-up for ").removesuffix(")")


def merged(outcomes: list[Outcome], earlier: list[Outcome]) -> list[Outcome]:
    """The rows of this run, and for the pages it did not run those of the earlier table, in page order."""
    ran = {page_of(o) for o in outcomes}
    rows = outcomes + [o for o in earlier if page_of(o) not in ran]
    order = {str(page.relative_to(REPOSITORY)): index for index, page in enumerate(PAGES)}
    return sorted(rows, key=lambda o: order.get(page_of(o), len(order)))  # stable: page order kept within a page


def report(outcomes: list[Outcome], args, started: float, scratch: Path | None, setup: str,
           earlier: dict | None = None) -> None:
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    from _common import machine, write_report

    this_run = {"machine": machine(), "setup": setup, "pages": sorted({page_of(o) for o in outcomes}),
                "max_seconds": args.max_seconds, "other_max_seconds": args.other_max_seconds,
                "total_seconds": round(time.perf_counter() - started, 1)}
    runs = [*(earlier or {}).get("runs", []), this_run]
    if earlier:
        outcomes = merged(outcomes, [Outcome(**row) for row in earlier["commands"]])
    counts = {s: sum(o.status == s for o in outcomes) for s in ("passed", "stopped", "set-up", "failed", "skipped")}
    first = runs[0]  # the full run; --update reruns are listed after it
    data = {"machine": first["machine"], "setup": first["setup"], "quick": args.quick,
            "max_seconds": first.get("max_seconds", args.max_seconds),
            "other_max_seconds": first.get("other_max_seconds", args.other_max_seconds),
            "small": args.small, "total_seconds": first["total_seconds"], "counts": counts,
            "scratch": str(scratch) if scratch else None, "runs": runs,
            "commands": [{k: v for k, v in asdict(o).items() if k != "output_tail" or o.status == "failed"} for o in outcomes]}
    lines = [
        "# Commands of the README and docs/, run" + (" (--quick: parse and --help only)" if args.quick else ""), "",
        f"`{data['machine']['command']}` on {data['machine']['host_cpu']}, torch {data['machine']['torch']}, "
        f"{data['machine']['date']}, load {data['machine'].get('load_average_1min', '?')}; {data['setup']}. "
        f"Time limit {data['max_seconds']:g} s per `cplmix train`, {data['other_max_seconds']:g} s per other command (then "
        f"SIGINT, as Ctrl-C); total {data['total_seconds']:.0f} s.", "",
        *([f"Pages rerun with --update: " + "; ".join(f"{', '.join(r['pages'])} by `{r['machine']['command']}` at "
                                                       f"{r['machine']['date']}" for r in runs[1:]), ""] if len(runs) > 1 else []),
        "Counts: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".", "",
        "| page | command | status | exit | s | checked / why |", "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        why = "; ".join(t for t in (o.checked, o.note) if t)
        code = "" if o.exit_code is None else str(o.exit_code)
        seconds = "" if o.seconds is None else f"{o.seconds:.1f}"
        lines.append(f"| {o.page} | `{cell(o.command)}` | {o.status} | {code} | {seconds} | {cell(why)} |")
    write_report(args.out, data, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pages", nargs="+", metavar="PAGE", help="only these pages (README.md, docs/cli.md, cli.md)")
    parser.add_argument("--max-seconds", type=float, default=240, help="then SIGINT (Ctrl-C) to a 'cplmix train'")
    parser.add_argument("--other-max-seconds", type=float, default=600,
                        help="then SIGINT (Ctrl-C) to any other command (an augmenter, a notebook, a server)")
    parser.add_argument("--quick", action="store_true", help="parse and --help only; runs nothing")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of the pages not run from the results already in --out (a rerun after a fix)")
    parser.add_argument("--small", action="store_true", help="the 10^5-cell file of docs/scale.md with 10^4 cells")
    parser.add_argument("--scratch", type=Path, help="scratch folder (default: a new temporary one, kept)")
    parser.add_argument("--out", type=Path, help="results without suffix (default: benchmarks/results/docs_commands"
                                                "[_quick])")
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / ("docs_commands_quick" if args.quick else "docs_commands")
    pages = PAGES
    if args.pages:
        wanted = {p.removeprefix("./") for p in args.pages}
        pages = [p for p in PAGES if str(p.relative_to(REPOSITORY)) in wanted or p.name in wanted]
        unknown = wanted - {str(p.relative_to(REPOSITORY)) for p in pages} - {p.name for p in pages}
        if unknown:
            parser.error(f"no such page: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    setup = ("the clone's own .venv (bash .ci/setup)" if (REPOSITORY / ".venv").exists()
             else f"{sys.prefix} with PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    outcomes: list[Outcome] = []
    if args.quick:
        for page in pages:
            for command in page_commands(page):
                outcomes.append(quick_check(str(page.relative_to(REPOSITORY)), command))
        report(outcomes, args, started, None, setup)
        return 1 if any(o.status == "failed" for o in outcomes) else 0

    import torch

    cuda = torch.cuda.is_available()
    scratch = (args.scratch or Path(tempfile.mkdtemp(prefix="docs_commands-"))).resolve()
    shared = scratch / "_prerequisites"
    shared.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if "PYTHONPATH" not in env and not (REPOSITORY / ".venv").exists():
        env["PYTHONPATH"] = str(REPOSITORY)
    makers: dict[str, str] = {}
    for page in PAGES:
        for command in page_commands(page):
            shell, _ = strip_comment(command)
            made = re.match(r"cplmix train \S+ --out (runs/[\w.-]+)", shell)
            if made and "--resume" not in shell and made.group(1) not in makers:
                makers[made.group(1)] = shell
    earlier = None
    if args.update and args.out.with_suffix(".json").exists():
        earlier = json.loads(args.out.with_suffix(".json").read_text())
    print(f"scratch: {scratch}; {setup}", flush=True)
    for page in pages:
        runner = PageRun(page, scratch, args, shared, makers, env)
        runner.shared = shared
        outcomes += runner.run(page_commands(page), cuda)
        with contextlib.redirect_stdout(io.StringIO()):  # after every page: a partial table survives an interrupt
            report(outcomes, args, started, scratch, setup, earlier)
    report(outcomes, args, started, scratch, setup, earlier)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
