"""Shared fixtures: real data (the bundled Zeisel 2015 cortex set) and small generated count matrices."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

os.environ.setdefault("CPLMIX_TEST", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def zeisel() -> AnnData:
    from cplmix_explorer import datasets

    return datasets.load("zeisel2015")


def mixture_counts(n_cells: int = 600, n_genes: int = 200, n_types: int = 4, seed: int = 0, sparse: bool = True) -> AnnData:
    """Counts of well-separated types: each type over-expresses its own block of genes (labels in obs['type'])."""
    rng = np.random.default_rng(seed)
    types = np.arange(n_cells) % n_types
    rates = np.full((n_types, n_genes), 0.5)
    block = n_genes // (2 * n_types)
    for k in range(n_types):
        rates[k, k * block : (k + 1) * block] = 8.0
    depth = rng.lognormal(0.0, 0.2, size=(n_cells, 1))
    counts = rng.poisson(rates[types] * depth).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1
    adata = AnnData(X=sp.csr_matrix(counts) if sparse else counts)
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["type"] = [f"T{t}" for t in types]
    return adata


@pytest.fixture
def mixture() -> AnnData:
    return mixture_counts()


# -- the served app and Chromium, for the browser tests (tests/test_*_browser.py) ------------------------------
@pytest.fixture(scope="module")
def server_args(tmp_path_factory) -> list[str]:
    """The app's flags (after ``panel serve ... --args``): an empty runs folder. A test module that serves
    other folders overrides this fixture."""
    return ["--runs-dir", str(tmp_path_factory.mktemp("runs"))]


@pytest.fixture(scope="module")
def server(request, server_args):
    """``panel serve apps/explorer.py`` for one test module, once it answers; its console goes to
    tests/artifacts/server_MODULE.log."""
    from app_server import ARTIFACTS, AppServer

    ARTIFACTS.mkdir(exist_ok=True)
    app = AppServer(server_args, ARTIFACTS / f"server_{request.module.__name__.removeprefix('test_')}.log")
    try:
        app.wait_ready()
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (a persistent context with a fresh profile) for one test module."""
    from playwright.sync_api import sync_playwright

    from app_server import launch_browser

    with sync_playwright() as playwright:
        context = launch_browser(playwright)
        try:
            yield context
        finally:
            context.close()
