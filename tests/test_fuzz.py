"""Property-based fuzzing (hypothesis) of the loaders and of `cplmix train`'s arguments.

Whatever the input: never a traceback; either a correct result or one clear error line. The examples are
derandomized (the same ones every run, so CI is reproducible) and few enough for the file to stay fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import param
import pytest
import scipy.sparse as sp
from anndata import AnnData
from conftest import mixture_counts
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import main
from cplmix_explorer.config import CplMixConfig, cli_flag
from cplmix_explorer.data.io import read_data
from cplmix_explorer.data.preprocess import LOG1P_NORMALIZE, prepare
from cplmix_explorer.errors import CplmixError

def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

# -- AnnData of every shape and kind --------------------------------------------------------------------------
SPECIAL_VALUES = [0.0, 1.0, 3.0, -1.0, -2.5, 0.5, 1e6, 1e30, 1e300, -1e300, math.nan, math.inf, -math.inf, 65504.0, 1e-310]
DTYPES = ["int8", "int32", "int64", "uint16", "float16", "float32", "float64", "bool"]
#: Names from a tiny alphabet (duplicates and empty names are likely) with a lone surrogate (not encodable as
#: UTF-8), a NUL, an accent and a space.
NAMES = st.text(alphabet=["a", "b", "\udcff", "\x00", "é", " "], max_size=2)


@st.composite
def anndatas(draw) -> AnnData:
    n_obs = draw(st.integers(0, 12) | st.integers(4, 12))  # empty shapes now and then, trainable ones often
    n_vars = draw(st.integers(0, 6) | st.integers(3, 6))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    size = n_obs * n_vars
    if dtype == np.bool_:
        values = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool)
    else:
        # mostly counts, so that preparation is reached; then a few entries replaced by edge values
        values = np.array(draw(st.lists(st.integers(0, 6), min_size=size, max_size=size)), dtype=np.float64)
        for position in draw(st.lists(st.integers(0, max(size - 1, 0)), max_size=3 if size else 0)):
            values[position] = draw(st.sampled_from(SPECIAL_VALUES) | st.floats(width=64))
        with np.errstate(all="ignore"):
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                values = np.clip(np.nan_to_num(values, nan=0.0), info.min, info.max)
            values = values.astype(dtype)
    matrix = values.reshape(n_obs, n_vars)
    storage = draw(st.sampled_from(["dense", "csr", "csc"]))
    if storage != "dense" and dtype != np.float16:  # scipy.sparse has no float16
        matrix = getattr(sp, f"{storage}_matrix")(matrix)
    if draw(st.booleans()):
        obs_names = draw(st.lists(NAMES, min_size=n_obs, max_size=n_obs))
    else:
        obs_names = [f"cell{i}" for i in range(n_obs)]
    if draw(st.booleans()):
        var_names = draw(st.lists(NAMES, min_size=n_vars, max_size=n_vars))
    else:
        var_names = [f"gene{j}" for j in range(n_vars)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about non-unique names
        adata = AnnData(
            X=matrix,
            obs=pd.DataFrame(index=pd.Index(obs_names, dtype=object)),
            var=pd.DataFrame(index=pd.Index(var_names, dtype=object)),
        )
    labels = draw(st.lists(st.sampled_from(["A", "B", None]), min_size=n_obs, max_size=n_obs))
    adata.obs["label"] = pd.Categorical(labels)
    return adata


def _is_one_clear_line(error: CplmixError) -> bool:
    text = str(error)
    if currently_in_test_context():
        event(f"error: {text[:40]}".encode("utf-8", "backslashreplace").decode())
    return bool(text.strip()) and "\n" not in text and "Traceback" not in text


@fuzz(60)
@given(
    adata=anndatas(),
    likelihood=st.sampled_from(["gaussian", "nb"]),
    normalize=st.sampled_from(["auto", "none"]),
    n_genes=st.sampled_from([1, 3, 5000]),
    labels=st.sampled_from([None, "label", "missing"]),
)
@pytest.mark.slow
def test_loaders_return_valid_data_or_one_clear_error(adata, likelihood, normalize, n_genes, labels):
    config = CplMixConfig().update(
        n_types=2, likelihood=likelihood, normalize=normalize, n_genes=n_genes, labels=labels,
        hidden_dim=8, n_hidden_layers=1, bottleneck_dim=4, batch_size=4, eval_every=1000,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare(adata, config)
    except CplmixError as error:
        assert _is_one_clear_line(error), repr(error)
        return
    # a prepared dataset is what the engine can train on: every cell, selected genes, finite model input
    assert prepared.n_cells == adata.n_obs
    assert 1 <= prepared.n_genes <= min(n_genes, adata.n_vars)
    assert len(set(prepared.genes)) == prepared.n_genes and set(prepared.genes) <= set(map(str, adata.var_names))
    assert prepared.matrix.dtype == np.float32
    assert np.isfinite(prepared.model_input()).all()
    if prepared.preprocessing.transform == LOG1P_NORMALIZE:
        assert (prepared.library_size > 0).all()
    # ... and training on it gives finite results or a clear numerical error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = CplMixVAE(adata, config=config)
            model.train(steps=2, progress=False)
            inference = model.predict()
    except CplmixError as error:
        assert _is_one_clear_line(error), repr(error)
        return
    event("trained")
    assert inference.consensus_type.shape == (adata.n_obs,)
    assert ((inference.consensus_type >= 0) & (inference.consensus_type < 2)).all()
    assert np.isfinite(inference.state_mean).all()


@fuzz(30)
@given(adata=anndatas())
def test_h5ad_files_read_back_as_data_or_one_clear_error(adata, tmp_path_factory):
    folder = tmp_path_factory.mktemp("h5ad")
    path = folder / "data.h5ad"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_h5ad(path)
    except Exception:  # names anndata itself cannot store (e.g. not UTF-8 encodable): not our reader's case
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)))  # then a damaged file instead
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = read_data(path)
    except CplmixError as error:
        assert _is_one_clear_line(error), repr(error)
        return
    event("read")
    assert loaded.shape == adata.shape


def test_non_utf8_names_in_an_h5ad_file_are_one_clear_error(tmp_path):
    import h5py

    path = tmp_path / "names.h5ad"
    mixture_counts(n_cells=10, n_genes=5).write_h5ad(path)
    with h5py.File(path, "r+") as handle:
        index = handle["var"].attrs["_index"]
        del handle["var"][index]
        handle["var"].create_dataset(index, data=np.array([b"\xff\xfe", b"g\xc3", b"ok", b"a", b"b"], dtype="S2"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata: "written without encoding metadata" (we wrote it so)
            loaded = read_data(path)
    except CplmixError as error:
        assert _is_one_clear_line(error)
    else:  # read as bytes-derived names: they must reach validation as names, not crash it
        assert loaded.n_vars == 5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(loaded, CplMixConfig().update(n_types=2))


# -- `cplmix train` arguments ---------------------------------------------------------------------------------
#: In-range values of the options that size the network stay small (a fuzzed run must take a second); the
#: out-of-range neighbors are refused before anything is built.
SMALL_CHOICES = {
    "n_types": [1, 2, 3, 1001],
    "state_dim": [0, 1, 3, 129],
    "n_arms": [0, 1, 2, 11],
    "hidden_dim": [3, 4, 8, 8193],
    "n_hidden_layers": [0, 1, 2, 17],
    "bottleneck_dim": [1, 2, 4, 1025],
}
TEXT_CHOICES = {
    "device": ["cpu", "auto", "cuda:7", "tpu", "", "cpu:0"],
    "layer": ["counts", "missing", ""],
    "labels": ["type", "missing", ""],
}
JUNK = ["x", "", "--", "\udcff"]
NOT_FUZZED = {"name", "steps", "epochs", "augmenter_path", "fast_path"}  # fast_path=compile takes minutes


def _values_for(name: str, parameter) -> st.SearchStrategy[str]:
    """Option values: in range three times as often as out of range, plus junk argparse must refuse."""
    if name in SMALL_CHOICES:
        *valid, too_big = [str(v) for v in SMALL_CHOICES[name]]
        return st.sampled_from(valid[1:] * 6 + [valid[0], too_big] * 2 + JUNK)
    if name in TEXT_CHOICES:
        return st.sampled_from(TEXT_CHOICES[name])
    if isinstance(parameter, param.Selector):
        return st.sampled_from([str(v) for v in parameter.objects] * 3 + ["bogus"])
    low, high = parameter.bounds or (None, None)
    if isinstance(parameter, param.Integer):
        valid = [v for v in (low, high, 1, 7, 100000) if v is not None and low <= v <= (high if high is not None else v)]
        invalid = [v for v in (low - 1 if low is not None else None, high + 1 if high is not None else None) if v is not None]
    else:
        valid = [v for v in (low, high, 0.3) if v is not None and low <= v <= (high if high is not None else v)]
        invalid = [low - 0.5 if low is not None else "-1e400", high + 0.5 if high is not None else "1e400", "nan", "inf", "-inf"]
    return st.sampled_from([str(v) for v in valid] * 6 + [str(v) for v in invalid] * 2 + JUNK)


@st.composite
def train_arguments(draw) -> list[str]:
    config = CplMixConfig()
    names = draw(st.lists(st.sampled_from(sorted(set(config.param) - NOT_FUZZED)), max_size=4, unique=True))
    argv: list[str] = []
    for name in names:
        parameter = config.param[name]
        flag = cli_flag(name)
        if isinstance(parameter, param.Boolean):
            argv.append(draw(st.sampled_from([flag, flag.replace("--", "--no-", 1)])))
        else:
            argv += [flag, draw(_values_for(name, parameter))]
    schedules = [["--steps", "0"], ["--steps", "x"], ["--epochs", "0.01"], ["--epochs", "nan"], ["--epochs", "inf"],
                 ["--epochs", "-1"], ["--steps", "2", "--epochs", "1"]]
    schedule = draw(st.sampled_from([["--steps", "2"]] * 8 + schedules))
    return schedule + argv


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    adata = mixture_counts(n_cells=24, n_genes=12, n_types=2)
    adata.layers["counts"] = adata.X.copy()
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


@fuzz(50)
@given(arguments=train_arguments())
@pytest.mark.slow
def test_train_arguments_end_in_results_or_one_error_line(arguments, tiny_file):
    out = Path(tempfile.mkdtemp(prefix="fuzz")) / "run"
    argv = ["train", str(tiny_file), "--out", str(out), "--quiet", "--hidden-dim", "8", "--eval-every", "1000"]
    argv += arguments  # later flags win, so fuzzed sizes replace the small defaults
    stderr, stdout = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(argv)
        errors = [line for line in stderr.getvalue().splitlines() if line.startswith("cplmix: error: ")]
        assert "Traceback" not in stderr.getvalue()
        assert code in (0, 2), (code, stderr.getvalue())
        event(f"exit {code}: {errors[0][15:55] if errors else ''}".encode("utf-8", "backslashreplace").decode())
        if code == 2:
            assert len(errors) == 1 and stderr.getvalue().count("\n") == 1, stderr.getvalue()
            if "training stopped" not in errors[0]:  # a user mistake writes nothing
                assert not out.exists(), (errors[0], sorted(p.name for p in out.iterdir()))
            return
        assert not errors
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["n_cells"] == 24
        result = anndata.read_h5ad(out / "result.h5ad")
        assert result.n_obs == 24 and result.obs["cplmix_type"].notna().all()
        assert np.isfinite(result.obsm["X_cplmix_state"]).all()
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
