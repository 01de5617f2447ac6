"""What a newcomer meets at the command line: output into a closed pipe, help texts, errors naming flags,
a help that loads no heavy library, and prune's output."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mixture_counts

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import build_parser, main
from cplmix_explorer.errors import CplmixError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _cplmix(*args: str) -> list[str]:
    return [sys.executable, "-m", "cplmix_explorer.cli", *args]


@pytest.mark.parametrize("args", [["datasets", "--json"], ["datasets"], ["--help"], ["bench", "--help"]])
def test_output_into_a_closed_pipe_ends_quietly(args):
    """`cplmix datasets --json | head -c 600`: the reader is gone before we write (the read end is closed
    before the command starts, so every write fails): no traceback, the exit status of a SIGPIPE (argparse
    itself drops a help text it cannot write and exits 0)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        completed = subprocess.run(_cplmix(*args), stdout=write_end, stderr=subprocess.PIPE, text=True, env=ENV, timeout=300)
    finally:
        os.close(write_end)
    assert completed.stderr == ""
    assert completed.returncode == (0 if "--help" in args else 128 + signal.SIGPIPE)


def test_datasets_piped_into_head_prints_its_first_bytes_without_an_error():
    completed = subprocess.run(f"{sys.executable} -m cplmix_explorer.cli datasets --json | head -c 600", shell=True,
                               capture_output=True, text=True, env=ENV, timeout=300)
    assert len(completed.stdout) == 600 and completed.stdout.startswith('{\n  "datasets"')
    assert completed.stderr == ""


def _all_arguments(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_arguments(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), action


def test_every_flag_has_a_description_and_names_its_default_once():
    arguments = list(_all_arguments(build_parser()))
    assert {command for command, _ in arguments} >= {"train", "evaluate", "prune", "bench", "datasets", "traverse", "augmenter train"}
    for command, action in arguments:
        name = f"cplmix {command} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{name} has no description"
        assert len(re.findall(r"default", action.help, flags=re.IGNORECASE)) <= 1, f"{name}: {action.help}"
    bench = {a.option_strings[0]: a for c, a in arguments if c == "bench"}
    for flag, action in bench.items():
        if action.nargs != 0:  # every bench flag that takes a value says its default
            assert "(default: " in action.help, f"cplmix bench {flag}: {action.help}"
    assert "(default: 115)" in bench["--types"].help and "(default: 200)" in bench["--steps"].help


def test_bench_help_shows_the_descriptions():
    out = subprocess.run(_cplmix("bench", "--help"), capture_output=True, text=True, env=ENV, timeout=300, check=True).stdout
    assert "Number of types K" in out and "(default: 115)" in out and "--threads" in out


@pytest.mark.parametrize("argv, line", [
    (["train", "synthetic", "--out", "{out}", "--types", "5000"], "cplmix: error: invalid value for --types: must be at most 1000, not 5000"),
    (["train", "synthetic", "--out", "{out}", "--lr", "0"], "cplmix: error: invalid value for --lr: must be greater than 0.0, not 0.0"),
    (["train", "synthetic", "--out", "{out}", "--genes", "0"], "cplmix: error: invalid value for --genes: must be at least 1, not 0"),
    (["bench", "--types", "1"], "cplmix: error: invalid value for --types: must be at least 2, not 1"),
    (["bench", "--steps", "0"], "cplmix: error: invalid value for --steps: must be at least 1, not 0"),
])
def test_range_errors_name_the_flag_not_the_internal_option(argv, line, tmp_path, capsys):
    assert main([a.replace("{out}", str(tmp_path / "run")) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line]
    assert not (tmp_path / "run").exists()


def test_the_api_names_its_keyword():
    with pytest.raises(CplmixError) as caught:
        CplMixVAE(mixture_counts(n_cells=60, n_genes=30), n_types=5000)
    assert str(caught.value) == "invalid value for n_types: must be at most 1000, not 5000"


HEAVY = ("torch", "panel", "anndata", "pandas", "scipy", "bokeh", "holoviews")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["datasets"], ["datasets", "--json"]])
def test_help_and_datasets_import_no_heavy_library(argv):
    code = (
        "import contextlib, io, sys\n"
        "from cplmix_explorer import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        code = cli.main({argv!r})\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        f"print(code, len(out.getvalue()) > 100, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300, check=True)
    assert out.stdout.split(" ", 2) == ["0", "True", "[]\n"], out.stdout + out.stderr


def test_the_package_still_offers_its_names():
    code = "import cplmix_explorer as cx; print(cx.CplMixVAE.__name__, cx.CplMixConfig.__name__, cx.datasets.load.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300, check=True)
    assert out.stdout.split() == ["CplMixVAE", "CplMixConfig", "load"]


def _run_in_a_terminal(args: list[str], columns: int) -> str:
    """Run ``args`` with stdout and stderr on one pseudo-terminal of ``columns`` columns (0: a terminal that
    reports no width, as some tools' embedded terminals do); everything it showed, as text."""
    import fcntl
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(args, stdout=secondary, stderr=secondary, env=ENV)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([primary], [], [], 300)
        assert ready, "no output for 300 s"
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("columns", [0, 100])
def test_prune_prints_no_blank_lines_before_its_json(tmp_path, columns):
    data = tmp_path / "tiny.h5ad"
    mixture_counts(n_cells=120, n_genes=40, n_types=3).write_h5ad(data)
    run_dir = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run_dir), "--steps", "20", "--types", "4", "--hidden-dim", "16",
                 "--n-hidden-layers", "2", "--batch-size", "32", "--quiet"]) == 0
    shown = _run_in_a_terminal(_cplmix("prune", str(run_dir), "--steps", "5", "--min-consensus", "1.0"), columns)
    lines = [line.split("\r")[-1] for line in shown.replace("\r\n", "\n").split("\n")]  # what stays on each line
    first_json = lines.index("{")
    assert all(line.strip() for line in lines[:first_json]), lines[:first_json]
    payload = json.loads("\n".join(lines[first_json:]))
    assert payload["k"] == 2 and payload["trajectory"]["k"][:3] == [4, 3, 2]
