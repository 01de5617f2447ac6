"""The README is a short front door; every relative link in it, docs/ and benchmarks/HISTORY.md leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"
PAGES = [README, *sorted((REPOSITORY / "docs").glob("*.md"))]
#: pages whose links are checked too: the measurement history that docs/quality.md leads to (its commands are
#: those of their day, so only its links are held current)
LINKED_PAGES = [*PAGES, REPOSITORY / "benchmarks" / "HISTORY.md"]
README_LIMIT = 15_000
SETUP_COMMANDS = (
    "bash .ci/setup && .venv/bin/panel serve apps/explorer.py",
    "bash .ci/setup && .venv/bin/python -m pytest -q",
)

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The page without its fenced code blocks (a link there is code, not a link)."""
    return FENCE.sub("", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page."""
    found = set()
    for title in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.lower().replace("`", "")).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text(encoding="utf-8"))) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_a_front_door_of_at_most_15000_characters():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= README_LIMIT, f"README.md has {len(text):,} characters; move detail into docs/"
    for command in SETUP_COMMANDS:
        assert command in text, f"the set-up command {command!r} is missing from README.md"
    assert "docs/img/" in text, "the README shows a picture of the app"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    links = relative_links(page)
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        file = (page.parent / unquote(target)).resolve() if target else page
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading #{anchor} in {file.relative_to(REPOSITORY)}")
    assert not broken, f"{page.relative_to(REPOSITORY)}: " + "; ".join(broken)


def test_the_link_check_sees_links_and_catches_a_broken_one(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here it is\n")
    page.write_text("See [a](there.md#here-it-is), ![b](\nmissing.png) and [c](https://example.org).\n"
                    "```\n[not a link](nowhere.md)\n```\n")
    assert relative_links(page) == ["there.md#here-it-is", "missing.png"]
    assert anchors(tmp_path / "there.md") == {"here-it-is"}


CODE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.MULTILINE | re.DOTALL)
IMPORT = re.compile(r"from (cplmix_explorer[\w.]*) import ([\w, ]+)|import (cplmix_explorer[\w.]*)")
MODULE_PATH = re.compile(r"cplmix_explorer(?:/[\w]+)+\.py|cplmix_explorer(?:\.[a-z_]+)+")


def code_lines(page: Path) -> list[str]:
    return [line.strip() for block in CODE.findall(page.read_text(encoding="utf-8")) for line in block[1].splitlines()]


def shown_commands() -> list[tuple[str, str]]:
    """(page, command line) for every ``cplmix ...`` line of a code block, without its comment and pipe."""
    found = []
    for page in PAGES:
        for line in code_lines(page):
            if line.startswith("cplmix "):
                command = line.split(" #")[0].split(" | ")[0].strip()
                found.append((str(page.relative_to(REPOSITORY)), command))
    return found


SHELL_COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:cplmix |python |jupyter execute |mkdir |cp |ls |printf |taskset |"
                           r"panel serve |torchrun |bash \.ci/setup )")
HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?\s*$")


def page_commands(page: Path) -> list[str]:
    """The shell commands of a page's code blocks in page order, as a user would paste them: ``cplmix``,
    ``python`` (also ``python - <<'EOF'`` with its body), ``jupyter execute``, ``panel serve``, ``mkdir``, ``cp``,
    ``ls``, ``printf``, ``taskset``, ``torchrun`` and the set-up lines, each with an environment prefix
    (``NAME=value``), a backslash continuation joined; output lines (``cplmix: error: ...``) are not commands."""
    found: list[str] = []
    lines = code_lines(page)
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not SHELL_COMMAND.match(line):
            continue
        while line.endswith("\\") and index < len(lines):
            line = line[:-1].rstrip() + " " + lines[index]
            index += 1
        heredoc = HEREDOC.search(line.split(" #")[0])
        if heredoc:
            body = []
            while index < len(lines) and lines[index] != heredoc.group(1):
                body.append(lines[index])
                index += 1
            index += 1
            line = "\n".join([line, *body, heredoc.group(1)])
        found.append(line)
    return found


def test_page_commands_joins_heredocs_and_continuations(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nCPLMIX_X=1 cplmix train a --out runs/a   # note\ncplmix: error: an output line\n"
                    "python - <<'EOF'\nprint(1)\nEOF\ntorchrun --nproc_per_node 2 \\\n    -m cplmix_explorer.train a.h5ad\n"
                    "```\n\n```python\nimport cplmix_explorer\n```\n")
    assert page_commands(page) == ["CPLMIX_X=1 cplmix train a --out runs/a   # note", "python - <<'EOF'\nprint(1)\nEOF",
                                   "torchrun --nproc_per_node 2 -m cplmix_explorer.train a.h5ad"]


@pytest.mark.parametrize("page, command", shown_commands(), ids=lambda value: value)
def test_every_cplmix_command_shown_is_one_the_cli_takes(page, command):
    """Every command line in the README and docs/ names a command and flags that exist (argparse accepts it);
    running them all would train for hours, so the pages' figures come from benchmarks/ instead."""
    import shlex

    from cplmix_explorer.cli import build_parser
    from cplmix_explorer.errors import CplmixError

    arguments = shlex.split(command)[1:]
    try:
        build_parser().parse_args(arguments)
    except CplmixError as error:
        pytest.fail(f"{page}: '{command}' is refused by the CLI: {error}")
    except SystemExit as exit:  # --help prints and exits 0
        assert exit.code == 0 and "--help" in arguments, f"{page}: '{command}' is refused by the CLI"


def test_every_import_shown_resolves():
    """Every ``from cplmix_explorer... import ...`` in the pages' code names a module and names that exist."""
    import importlib

    missing = []
    for page in PAGES:
        for line in code_lines(page):
            for module, names, plain in IMPORT.findall(line):
                try:
                    imported = importlib.import_module(module or plain)
                except ImportError as error:
                    missing.append(f"{page.name}: {line} ({error})")
                    continue
                missing += [f"{page.name}: {module} has no {name}" for name in (n.strip() for n in names.split(","))
                            if name and not hasattr(imported, name)]
    assert not missing, "\n".join(missing)


def named_module_missing(name: str) -> bool:
    """True when a module path (``cplmix_explorer/train/engine.py``) or dotted name
    (``cplmix_explorer.analysis.trace.EvaluationTrace``) leads to nothing."""
    import importlib

    if name.endswith(".py"):
        return not (REPOSITORY / name).is_file()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for attribute in parts[end:]:
            if not hasattr(found, attribute):
                return True
            found = getattr(found, attribute)
        return False
    return True


def test_every_module_the_pages_name_exists():
    """Module paths and dotted names in the pages (``cplmix_explorer/train/engine.py``,
    ``cplmix_explorer.analysis.trace``) lead to a module, so that moving one shows which pages to update."""
    missing = sorted({f"{page.name}: {name}" for page in PAGES for name in MODULE_PATH.findall(page.read_text(encoding="utf-8"))
                      if named_module_missing(name)})
    assert not missing, "\n".join(missing)


def test_the_module_check_sees_a_moved_module():
    assert named_module_missing("cplmix_explorer/train/run.py") and named_module_missing("cplmix_explorer.train.run")
    assert not named_module_missing("cplmix_explorer/workflows/run.py")
    assert not named_module_missing("cplmix_explorer.analysis.trace.EvaluationTrace")


def test_the_command_check_refuses_a_flag_the_cli_does_not_take():
    from cplmix_explorer.cli import build_parser
    from cplmix_explorer.errors import CplmixError

    with pytest.raises(CplmixError, match="--no-such-flag"):
        build_parser().parse_args(["traverse", "runs/x", "--out", "x.png", "--no-such-flag"])


def test_docs_commands_quick_finds_every_page_command_parsed_or_present(tmp_path):
    """benchmarks/docs_commands.py --quick (what CI can afford): every cplmix line parses and prints its --help,
    every script, notebook and app a line names exists; the full run's table is benchmarks/results/docs_commands.md."""
    import json
    import subprocess
    import sys

    out = tmp_path / "quick"
    done = subprocess.run([sys.executable, str(REPOSITORY / "benchmarks" / "docs_commands.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["commands"]
    assert len(rows) == sum(len(page_commands(page)) for page in PAGES) > 50
    assert {row["page"] for row in rows} >= {"README.md", "docs/cli.md", "docs/reliability.md"}
    assert all(row["status"] == "passed" for row in rows)
