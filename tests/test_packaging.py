"""What the set-up installs and how setuptools reads the project (pyproject.toml)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def test_the_license_is_an_spdx_expression_so_setuptools_prints_no_deprecation_banner():
    project = _project()
    assert project["license"] == "MIT", "an SPDX string, not a table ({text = ...}), which setuptools >= 77 deprecates"
    assert not any(c.startswith("License ::") for c in project.get("classifiers", [])), \
        "license classifiers beside an SPDX license are deprecated too"


def test_the_set_up_installs_umap_and_the_notebook_progress_bar():
    names = {re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in _project()["dependencies"]}
    assert "umap-learn" in names, "the cell map is a UMAP on a fresh install"
    assert "ipywidgets" in names, "tqdm's notebook bar needs ipywidgets (no 'IProgress not found' warning)"
