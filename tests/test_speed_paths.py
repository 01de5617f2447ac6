"""Speed paths and scale: fast path vs eager, sparse vs dense storage, per-step cost independent of the
number of cells, chunked inference, and the benchmark scripts' quick modes.

torch.compile takes more than 60 s on this 2-core CPU, so the CPU tests check the fast-path choice and its
refusal logic; the CUDA-graph step is compared with the eager step only where a CUDA GPU is present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from conftest import mixture_counts
from torch.utils._python_dispatch import TorchDispatchMode

from cplmix_explorer import CplMixConfig, CplMixVAE
from cplmix_explorer.model.inference import infer
from cplmix_explorer.workflows.bench import generated_counts
from cplmix_explorer.cli import main as cli_main
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.train.device_data import DeviceData
from cplmix_explorer.train.engine import Trainer, build_module, choose_fast_path

@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread avoids OpenMP's per-operation overhead (large on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = dict(hidden_dim=32, n_hidden_layers=2, bottleneck_dim=8, validation_fraction=0.0, eval_every=10**9)


def _trainer(adata: AnnData, **options) -> Trainer:
    config = CplMixConfig().update(**{**SMALL, "n_types": 4, "n_genes": adata.n_vars, "device": "cpu", **options})
    prepared = prepare(adata, config)
    trainer = Trainer(build_module(config, prepared.n_genes), prepared, config)
    trainer.evaluate_at_end = False
    return trainer


# -- fast path vs eager ------------------------------------------------------------------------------------
def test_fast_path_is_chosen_by_device_and_graph_on_cpu_is_refused_clearly(capsys):
    assert choose_fast_path("auto", torch.device("cpu")) == "eager"
    assert choose_fast_path("auto", torch.device("cuda", 0)) == "graph"
    assert choose_fast_path("eager", torch.device("cuda", 0)) == "eager"
    with pytest.raises(CplmixError, match="CUDA-graph fast path needs a CUDA device"):
        choose_fast_path("graph", torch.device("cpu"))
    code = cli_main(["bench", "--device", "cpu", "--fast-path", "graph", "--genes", "30", "--types", "3",
                     "--cells", "200", "--batch-size", "32", "--steps", "2", "--warmup", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cplmix: error: the CUDA-graph fast path needs a CUDA device") and "Traceback" not in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph fast path needs a CUDA GPU")
def test_cuda_graph_step_gives_the_losses_of_the_eager_step():
    adata = mixture_counts(n_cells=800, n_genes=120)
    runs = {}
    for fast_path in ("eager", "graph"):
        config = CplMixConfig().update(**{**SMALL, "n_types": 4, "n_genes": 120, "device": "cuda", "seed": 2,
                                          "fast_path": fast_path, "log_every": 7, "batch_size": 64})
        prepared = prepare(adata, config)
        trainer = Trainer(build_module(config, prepared.n_genes), prepared, config)
        result = trainer.fit(60)  # crosses epoch boundaries (12 steps per epoch)
        assert trainer.fast_path == fast_path  # the graph was captured, not fallen back to eager
        runs[fast_path] = result
    eager, graph = runs["eager"], runs["graph"]
    assert np.array_equal(eager.history_steps, graph.history_steps)
    # the same step function: equal up to float rounding (capturable Adam keeps its step count on the GPU),
    # which training can only amplify slowly
    np.testing.assert_allclose(graph.history_values[:10], eager.history_values[:10], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(graph.history_values, eager.history_values, rtol=1e-2, atol=1e-2)


# -- sparse vs dense storage -------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_counts", [False, True])
def test_sparse_and_dense_storage_gather_identical_batches(keep_counts):
    adata = generated_counts(300, 80, seed=3)
    counts = adata.X.tolil()
    counts[5, :] = 0  # a row with a single non-zero: nearly all its padded positions must read zeros
    counts[5, 7] = 2.0
    adata.X = counts.tocsr()
    dense = adata.copy()
    dense.X = adata.X.toarray()
    config = CplMixConfig().update(n_genes=80)
    stored = {name: DeviceData(prepare(a, config), torch.device("cpu"), keep_counts=keep_counts)
              for name, a in (("sparse", adata), ("dense", dense))}
    assert stored["sparse"].sparse and not stored["dense"].sparse
    index = torch.as_tensor(np.r_[5, 299, 0, np.random.default_rng(0).permutation(300)[:40]])
    batches = {name: data.model_input(index) for name, data in stored.items()}
    assert torch.equal(batches["sparse"], batches["dense"])
    expected = prepare(dense, config).model_input(index.numpy())  # the host transform, row by row
    if keep_counts:  # transformed per batch on the device (float32 scale): equal up to rounding
        np.testing.assert_allclose(batches["sparse"].numpy(), expected, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(batches["sparse"].numpy(), expected)


def test_sparse_and_dense_storage_train_to_identical_losses():
    sparse = mixture_counts(n_cells=400, n_genes=100)
    dense = sparse.copy()
    dense.X = sparse.X.toarray()
    histories = [_trainer(adata, seed=5, batch_size=64).fit(30).history_values for adata in (sparse, dense)]
    assert histories[0].shape == (30, 2 + 3 * 2)
    assert np.array_equal(histories[0], histories[1])


def test_sparse_storage_holds_the_non_zeros_only():
    adata = generated_counts(2000, 300, seed=1)
    data = DeviceData(prepare(adata, CplMixConfig().update(n_genes=300)), torch.device("cpu"))
    nnz, n_cells = adata.X.nnz, adata.n_obs
    # values float32 + column indices int32 (+ one padding slot), row pointers int64, library float32
    assert data.nbytes == (nnz + 1) * 8 + (n_cells + 1) * 8 + n_cells * 4
    assert data.nbytes < 0.5 * n_cells * adata.n_vars * 4


# -- per-step cost does not grow with the number of cells --------------------------------------------------
#: Operations whose cost depends on the positions they read, not on the size of the tensor they read from.
_INDEXING = {"aten.index_select.default", "aten.slice.Tensor", "aten.index.Tensor", "aten.gather.default",
             "aten.select.int", "aten.take.default"}


class _OpRecorder(TorchDispatchMode):
    """Records every aten call with the shapes of the tensors it reads and produces (for indexing operations,
    not the shape of the tensor indexed into)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        inputs = args[1:] if name in _INDEXING else args
        read = tuple(tuple(a.shape) for a in torch.utils._pytree.tree_leaves((inputs, kwargs)) if isinstance(a, torch.Tensor))
        made = tuple(tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
        self.calls.append((name, read, made))
        return out


def _steps_trace(adata: AnnData) -> tuple[list, Trainer]:
    trainer = _trainer(adata, seed=0, batch_size=64, log_every=4, input_dropout=0.2)
    trainer.fit(5)  # epoch 0's permutation is drawn here (once per epoch: O(batch) per step amortised)
    with _OpRecorder() as recorder:
        trainer.fit(13)  # 8 steps inside epoch 0, with two metric reads
    return recorder.calls, trainer


def test_training_step_does_no_work_proportional_to_the_number_of_cells():
    small = generated_counts(1000, 60, seed=4)
    large = AnnData(X=sp.vstack([small.X] * 20, format="csr"))  # same rows 20 times: same genes, same row lengths
    large.var_names = small.var_names
    trace_small, trainer_small = _steps_trace(small)
    trace_large, trainer_large = _steps_trace(large)
    assert trainer_large.data.n_cells == 20 * trainer_small.data.n_cells
    assert trainer_large.data.max_row_nnz == trainer_small.data.max_row_nnz
    assert len(trace_small) > 8 * 50  # a real step runs many operations
    # the same operations on tensors of the same shapes, whatever the number of cells
    assert trace_large == trace_small
    largest = max(np.prod(shape) for _, read, made in trace_large for shape in read + made)
    assert largest <= trainer_large.module.n_arms * 64 * 60  # nothing bigger than the arms' copies of one batch


# -- chunked inference -------------------------------------------------------------------------------------
def test_inference_in_chunks_equals_one_chunk_and_the_eval_forward_pass():
    adata = mixture_counts(n_cells=300, n_genes=80)
    model = CplMixVAE(adata, n_types=4, n_arms=3, seed=0, device="cpu", **SMALL)
    model.train(steps=40, progress=False)
    data = model.device_data()
    whole = infer(model.module, data, chunk_size=300)
    chunked = infer(model.module, data, chunk_size=7)
    np.testing.assert_array_equal(chunked.type_per_arm, whole.type_per_arm)
    np.testing.assert_array_equal(chunked.consensus_type, whole.consensus_type)
    for name in ("confidence_per_arm", "consensus_confidence", "state_mean", "latent"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-5, atol=1e-6, err_msg=name)
    assert whole.state_mean.shape == (3, 300, 2) and whole.latent.shape == (3, 300, 8)
    # the decoder-free pass gives what the model's own eval forward pass gives
    model.module.eval()
    with torch.no_grad():
        x = data.model_input(torch.arange(300)).unsqueeze(0).expand(3, -1, -1)
        out = model.module(x)
    np.testing.assert_array_equal(whole.type_per_arm, out.q.argmax(-1).numpy())
    np.testing.assert_allclose(whole.state_mean, out.mu.numpy(), rtol=1e-5, atol=1e-6)
    # a subset of rows in chunks: the rows' own results
    rows = np.array([299, 3, 150, 4, 5, 6, 7, 8, 9])
    subset = infer(model.module, data, rows=rows, chunk_size=4)
    np.testing.assert_array_equal(subset.type_per_arm, whole.type_per_arm[:, rows])
    np.testing.assert_allclose(subset.latent, whole.latent[:, rows], rtol=1e-5, atol=1e-6)


# -- benchmark scripts (quick modes, tiny sizes) -----------------------------------------------------------
def _run_script(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), *argv])
    module = __import__(name)
    module.main()


def test_gpu_check_quick_runs_on_cpu_and_writes_one_json_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    _run_script("gpu_check", ["--quick", "--device", "cpu"], monkeypatch)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert printed == written
    assert printed["device"] == "cpu" and printed["quick"] is True
    for key in ("graph_vs_eager", "arms2_batch256", "arms5_batch256", "batch5000", "smartseq_40k_schedule",
                "sparse_training", "chunked_inference"):
        assert key in printed, key
    assert printed["sparse_training"]["it_per_s"] > 0
    assert printed["chunked_inference"]["cells"] == printed["sparse_training"]["cells"]


def test_throughput_and_scale_quick_write_results(tmp_path, monkeypatch, capsys):
    _run_script("throughput", ["--quick", "--out", str(tmp_path)], monkeypatch)
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert {row["sweep"] for row in report["rows"]} == {"batch_size", "arms", "cells"}
    assert report["machine"]["torch"] == torch.__version__ and "throughput.py" in report["machine"]["command"]
    assert (tmp_path / "throughput.md").read_text().startswith("# Training throughput")
    _run_script("scale", ["--quick", "--out", str(tmp_path)], monkeypatch)
    scale = json.loads((tmp_path / "scale_quick.json").read_text())
    assert scale["inference"]["cells"] == scale["cells"]
    assert scale["memory"]["peak_rss_mb"] > 0 and scale["memory"]["dense_equivalent_mb"] > 0
