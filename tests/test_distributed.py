"""Multi-process training on CPU with gloo: the objective equals the single-process objective on the
global batch (loss and gradients), and `torchrun -m cplmix_explorer.train` works as written."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from conftest import mixture_counts

from cplmix_explorer.model.losses import cplmix_loss
from cplmix_explorer.model.network import CoupledMixtureVAE

SHAPE = dict(n_genes=40, n_types=5, state_dim=2, n_arms=3, hidden_dim=16, n_hidden_layers=2, bottleneck_dim=6,
             input_dropout=0.0)
BATCH = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    """Weights, data and noise in float64, so the comparison measures the objective, not float32 rounding."""
    torch.manual_seed(0)
    model = CoupledMixtureVAE(**SHAPE).double()
    x = torch.rand(3, BATCH, 40, dtype=torch.float64) * 2
    gumbel = -torch.empty(3, BATCH, 5, dtype=torch.float64).exponential_().log()
    normal = torch.randn(3, BATCH, 2, dtype=torch.float64)
    return model.state_dict(), x, gumbel, normal


def _loss_and_grads(model, x, noise, reducer=None):
    out = model(x, 1.0, noise=noise)
    # with the marginal-entropy term on, so that its category marginal is checked to be the global batch's too
    terms = cplmix_loss(out, x, likelihood="gaussian", lam=1.0, beta=1.0, marginal_entropy_weight=0.5, reducer=reducer)
    terms.total.backward()
    return terms.total.detach()


def _worker(rank, world, port, result_path):
    import torch.distributed as dist

    from cplmix_explorer.train.distributed import DistributedContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    context = DistributedContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"), backend="gloo")
    state, x, gumbel, normal = _inputs()
    model = CoupledMixtureVAE(**SHAPE).double()
    model.load_state_dict(state)
    model.set_batch_reducer(context.reduce_sum)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    local = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    loss = _loss_and_grads(ddp, x[:, local], (gumbel[:, local], normal[:, local]), reducer=context.reduce_sum)
    global_loss = context.mean(loss)
    if rank == 0:
        grads = {name: p.grad for name, p in model.named_parameters()}
        buffers = {name: b for name, b in model.named_buffers()}
        torch.save({"loss": global_loss, "grads": grads, "buffers": buffers}, result_path)
    dist.barrier()
    dist.destroy_process_group()
    # leave without the interpreter's teardown: gloo's worker threads can still hold work objects whose tensors
    # reach back into Python, and freeing them while the interpreter shuts down aborts the process now and then
    # (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291), after the result is written
    os._exit(0)


def test_two_gloo_processes_equal_one_process_on_the_global_batch(tmp_path):
    state, x, gumbel, normal = _inputs()
    single = CoupledMixtureVAE(**SHAPE).double()
    single.load_state_dict(state)
    single.train()
    loss = _loss_and_grads(single, x, (gumbel, normal))

    result_path = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(result_path)), nprocs=2, join=True)
    distributed = torch.load(result_path, weights_only=True)

    assert distributed["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for name, parameter in single.named_parameters():
        assert torch.allclose(distributed["grads"][name], parameter.grad, rtol=1e-5, atol=1e-5), name
    for name, buffer in single.named_buffers():  # BatchNorm running statistics of the global batch
        assert torch.allclose(distributed["buffers"][name], buffer, rtol=1e-5, atol=1e-6), name


def test_per_process_batch_statistics_would_differ():
    # The reference's multi-GPU variant computes the batch variance per GPU: a different objective.
    state, x, gumbel, normal = _inputs()
    model = CoupledMixtureVAE(**SHAPE).double()
    model.load_state_dict(state)
    model.train()
    whole = model(x, 1.0, noise=(gumbel, normal))
    global_terms = cplmix_loss(whole, x, likelihood="gaussian", lam=1.0, beta=1.0)
    halves = [slice(0, BATCH // 2), slice(BATCH // 2, BATCH)]
    per_half = [
        cplmix_loss(model(x[:, h], 1.0, noise=(gumbel[:, h], normal[:, h])), x[:, h], likelihood="gaussian",
                    lam=1.0, beta=1.0).total
        for h in halves
    ]
    assert abs(float(sum(per_half).detach() / 2) - global_terms.total.item()) > 1e-3


@pytest.mark.slow
def test_torchrun_trains_a_run_folder(tmp_path):
    data = tmp_path / "tiny.h5ad"
    mixture_counts(n_cells=240, n_genes=60).write_h5ad(data)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "cplmix_explorer.train", str(data), "--out", str(out), "--steps", "30",
               "--types", "4", "--batch-size", "64", "--device", "cpu", "--quiet", "--labels", "type"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "checkpoint.safetensors").exists() and (out / "result.h5ad").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 30 and metrics["status"] == "completed"
    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2

    # A user mistake: rank 0 prints one line and every process exits with code 2 (torchrun itself then
    # reports the failed processes and exits non-zero).
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode != 0
    messages = [line for line in again.stderr.splitlines() if line.startswith("cplmix: error: ")]
    assert len(messages) == 1 and "already holds a run" in messages[0]
    assert "exitcode  : 2" in again.stderr
