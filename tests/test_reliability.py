"""Interrupted training, damaged and malicious checkpoints, tampered run folders, numerical faults.

Every run is real (small) training through the `cplmix` command or the engine; faults are real: signals to a
real process, bytes changed on disk, crafted files, data that overflows, weights that became NaN.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mixture_counts
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import main
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.errors import CplmixError, NonFiniteLossError
from cplmix_explorer.train.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    _digest,
    _metadata_digest,
    load_run_checkpoint,
    read_checkpoint,
)
from cplmix_explorer.train.events import StepMetrics, TrainingRestarted
from cplmix_explorer.workflows.run import train_run

REPO = Path(__file__).resolve().parents[1]
#: A small network, so a real run takes seconds on two shared cores.
SMALL = ["--types", "3", "--hidden-dim", "16", "--n-hidden-layers", "2", "--batch-size", "32", "--eval-every", "1000"]


def small_config(**changes) -> CplMixConfig:
    options = dict(n_types=3, hidden_dim=16, n_hidden_layers=2, batch_size=32, eval_every=1000)
    return CplMixConfig().update(**{**options, **changes})


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    mixture_counts(n_cells=120, n_genes=40, n_types=3).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def finished_run(tiny_h5ad, tmp_path_factory) -> Path:
    """A trained run folder with a newest (step 20) and a previous (step 10) checkpoint."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", str(tiny_h5ad), "--out", str(run_dir), "--steps", "20", "--checkpoint-every", "10",
                 "--quiet", *SMALL])
    assert code == 0
    assert read_checkpoint(run_dir / PREVIOUS_NAME).step == 10
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("cplmix: warning:")]
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("cplmix: error: ")
    return err[0]


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_safetensors((run_dir / CHECKPOINT_NAME).read_bytes())
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optimizer."))}


def checkpoint_step(path: Path) -> int:
    return read_checkpoint(path).step


# -- 1. interrupted training ----------------------------------------------------------------------------------
def _start_training(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "cplmix_explorer.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(path: Path, process: subprocess.Popen, newer_than: int = -1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if path.exists() and checkpoint_step(path) > newer_than:
                return
        except CplmixError:  # caught between two renames: look again
            pass
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at {path} after {timeout} s")


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_reaches_the_same_model(tiny_h5ad, tmp_path, capsys):
    """SIGTERM stops with a checkpoint at the current step; SIGKILL loses only the steps since the last
    periodic checkpoint; each --resume continues the same step count, optimizer and random streams, so
    the final model equals an uninterrupted run's."""
    schedule = ["--steps", "60", "--checkpoint-every", "10", "--log-every", "10", "--seed", "4", "--quiet", *SMALL]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(["train", str(tiny_h5ad), "--out", str(straight), *schedule]) == 0

    first = _start_training([str(tiny_h5ad), "--out", str(interrupted), *schedule])
    _wait_for_checkpoint(interrupted / CHECKPOINT_NAME, first)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    match = re.search(r"interrupted by SIGTERM at step (\d+); checkpoint kept in", stderr)
    assert match, stderr
    stopped_at = int(match.group(1))
    assert 10 <= stopped_at < 60
    assert checkpoint_step(interrupted / CHECKPOINT_NAME) == stopped_at
    assert "Traceback" not in stderr

    second = _start_training([str(tiny_h5ad), "--out", str(interrupted), "--resume", "--quiet"])
    _wait_for_checkpoint(interrupted / CHECKPOINT_NAME, second, newer_than=stopped_at)
    second.send_signal(signal.SIGKILL)
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL  # killed mid-run, not finished
    killed_at = checkpoint_step(load_run_checkpoint_path(interrupted))
    assert stopped_at < killed_at < 60

    assert main(["train", str(tiny_h5ad), "--out", str(interrupted), "--resume", "--quiet"]) == 0
    expected, resumed = model_tensors(straight), model_tensors(interrupted)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.allclose(expected[name], resumed[name], rtol=1e-4, atol=1e-6), name
    straight_metrics = json.loads((straight / "metrics.json").read_text())
    resumed_metrics = json.loads((interrupted / "metrics.json").read_text())
    assert resumed_metrics["step"] == straight_metrics["step"] == 60
    # the loss history after the last interruption is the same (blocks of 10 steps wholly after it)
    straight_loss = dict(zip(straight_metrics["history"]["step"], straight_metrics["history"]["loss"]))
    resumed_loss = {s: v for s, v in zip(resumed_metrics["history"]["step"], resumed_metrics["history"]["loss"])
                    if s - 10 >= killed_at}
    assert resumed_loss and max(resumed_loss) == 60
    assert np.allclose([resumed_loss[s] for s in resumed_loss], [straight_loss[s] for s in resumed_loss], rtol=1e-4)


def load_run_checkpoint_path(run_dir: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(load_run_checkpoint(run_dir).path)


# -- 2. damaged checkpoints -----------------------------------------------------------------------------------
def test_truncated_checkpoint_falls_back_to_the_previous_one_with_a_warning(run_copy, tiny_h5ad, capsys):
    latest = run_copy / CHECKPOINT_NAME
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"damaged.*using the previous checkpoint \(step 10\)"):
        assert load_run_checkpoint(run_copy).step == 10
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        assert main(["evaluate", str(run_copy)]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 10


def test_flipped_tensor_byte_is_caught_by_the_checksum(run_copy):
    latest = run_copy / CHECKPOINT_NAME
    payload = bytearray(latest.read_bytes())
    payload[-3] ^= 0xFF  # inside the last tensor's data
    latest.write_bytes(bytes(payload))
    with pytest.raises(CplmixError, match="checksum mismatch"):
        read_checkpoint(latest)


def test_changed_header_entry_is_caught_by_the_header_checksum(run_copy):
    latest = run_copy / CHECKPOINT_NAME
    payload = latest.read_bytes()
    tampered = payload.replace(b'"step":"20"', b'"step":"90"')
    assert tampered != payload
    latest.write_bytes(tampered)
    with pytest.raises(CplmixError, match="header checksum mismatch"):
        read_checkpoint(latest)


def test_both_checkpoints_damaged_is_one_error_line(run_copy, capsys):
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = run_copy / name
        path.write_bytes(path.read_bytes()[:100])
    assert main(["evaluate", str(run_copy)]) == 2
    line = one_error_line(capsys)
    assert "no intact checkpoint" in line and CHECKPOINT_NAME in line and PREVIOUS_NAME in line


def test_resume_from_the_previous_checkpoint_sets_the_damaged_one_aside(run_copy, tiny_h5ad):
    latest = run_copy / CHECKPOINT_NAME
    latest.write_bytes(b"\x00" * 64)
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        outcome = train_run(tiny_h5ad, run_copy, resume=True, progress=False)
    assert outcome.result.step == 20
    assert (run_copy / "checkpoint.damaged.safetensors").read_bytes() == b"\x00" * 64
    assert read_checkpoint(latest).step == 20


# -- 2. malicious files ---------------------------------------------------------------------------------------
class WritesAMarker:
    """Unpickling this object creates a file: what an attacker's payload would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_renamed_to_a_checkpoint_is_refused_and_not_run(run_copy, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    payload = pickle.dumps({"model": WritesAMarker(marker)})
    pickle.loads(payload)  # the payload is real: unpickling it runs code
    assert marker.exists()
    marker.unlink()
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        (run_copy / name).write_bytes(payload)
    assert main(["evaluate", str(run_copy)]) == 2
    assert "not a cplmix checkpoint" in one_error_line(capsys)
    torch.save({"model": WritesAMarker(marker)}, run_copy / CHECKPOINT_NAME)  # torch's zip + pickle format
    with pytest.raises(CplmixError, match="not a cplmix checkpoint"):
        read_checkpoint(run_copy / CHECKPOINT_NAME)
    assert not marker.exists()


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<Q", 2**40) + b"{}",  # declares a terabyte header
        struct.pack("<Q", 2**64 - 1) + b"{}",
        struct.pack("<Q", 200_000) + b"[" * 200_000,  # nesting deep enough to exhaust a recursive parser
        struct.pack("<Q", 5) + b"\xff\xfe{}}",  # not UTF-8
        struct.pack("<Q", 2) + b"[]",  # JSON, but not an object
        struct.pack("<Q", 53) + b'{"__metadata__":{"format":"cplmix-checkpoint","step":5}}'[:53],
        b"\x01\x02",
    ],
    ids=["terabyte-header", "max-header", "deep-nesting", "not-utf8", "json-list", "non-string-metadata", "short"],
)
def test_crafted_headers_are_refused_with_a_message(tmp_path, header):
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(header)
    with pytest.raises(CplmixError, match="not a cplmix checkpoint|invalid header"):
        read_checkpoint(path)


def _rewrite_header(path: Path, change) -> None:
    """Rewrite a real checkpoint with ``change(metadata, tensors)``, recomputing its checksums as an attacker
    could, so that the type checks themselves are exercised."""
    payload = path.read_bytes()
    size = int.from_bytes(payload[:8], "little")
    metadata = json.loads(payload[8 : 8 + size])["__metadata__"]
    tensors = load_safetensors(payload)
    tensors = change(metadata, tensors) or tensors
    metadata["sha256"] = _digest(tensors)
    metadata["metadata_sha256"] = _metadata_digest(metadata)
    path.write_bytes(save_safetensors(tensors, metadata=metadata))


def _set(key, value):
    def change(metadata, tensors):
        metadata[key] = value

    return change


def _set_config(key, value):
    def change(metadata, tensors):
        config = json.loads(metadata["config"])
        config[key] = value
        metadata["config"] = json.dumps(config)

    return change


def _replace_tensor(name, tensor):
    def change(metadata, tensors):
        return {**tensors, name: tensor}

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("step", "ten"), "'step' is not a non-negative integer"),
        (_set("step", "-3"), "'step' is not a non-negative integer"),
        (_set("format_version", "1e9"), "'format_version' is not a non-negative integer"),
        (_set("config", "[1, 2]"), "'config' is not a JSON object"),
        (_set("config", "{not json"), "'config' is not valid JSON"),
        (_set("preprocessing", '{"transform": "rm -rf", "genes": ["a"]}'), "unknown preprocessing transform"),
        (_set("preprocessing", '{"transform": "none", "genes": [1, 2]}'), "gene list"),
        (_set("preprocessing", '{"transform": "none", "genes": ["a"], "__class__": "os.system"}'), "unknown preprocessing entries"),
        (_set("optimizer", '{"param_groups": "all"}'), "parameter groups"),
        (_set("optimizer", '{"param_groups": [{"params": [0], "lr": "fast"}]}'), "'lr' is not a number"),
        (_set("extra", "3"), "'extra' is not a JSON object"),
        (_set_config("__init__", "boom"), r"unknown option\(s\): __init__"),
        (_set_config("n_types", "many"), "invalid value for n_types"),
        (_set_config("lr", [1, 2]), "invalid value for lr"),
        (_replace_tensor("rng.cpu", torch.zeros(7, dtype=torch.uint8)), "random state 'cpu' has 7 bytes"),
        (_replace_tensor("rng.cpu", torch.zeros(3, 3)), "random state 'cpu' is not a byte vector"),
        (_replace_tensor("optimizer.x.exp_avg", torch.zeros(1)), "unexpected tensor 'optimizer.x.exp_avg'"),
    ],
)
def test_header_entries_of_unexpected_types_are_refused(run_copy, change, message):
    latest = run_copy / CHECKPOINT_NAME
    _rewrite_header(latest, change)
    with pytest.raises(CplmixError, match=message) as refused:
        read_checkpoint(latest)
    assert "\n" not in str(refused.value)


def test_optimizer_state_of_the_wrong_shape_is_refused_on_resume(run_copy, tiny_h5ad, capsys):
    latest = run_copy / CHECKPOINT_NAME
    _rewrite_header(latest, _replace_tensor("optimizer.0.exp_avg", torch.zeros(2, 2)))
    (run_copy / PREVIOUS_NAME).unlink()
    assert main(["train", str(tiny_h5ad), "--out", str(run_copy), "--resume", "--quiet"]) == 2
    assert "optimizer state does not match" in one_error_line(capsys)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"data": 42}', "'data' is not a path"),
        (b'{"data": "x.h5ad", "config": {"n_types": "many"}}', "invalid value for n_types"),
        (b'{"data": "x.h5ad", "config": {"rm_rf": true}}', r"unknown option\(s\): rm_rf"),
        (b'{"data": "x.h5ad", "config": "all"}', "'config' is not a JSON object"),
    ],
)
def test_tampered_run_json_is_one_error_line(run_copy, tiny_h5ad, capsys, content, message):
    (run_copy / "run.json").write_bytes(content)
    assert main(["evaluate", str(run_copy)]) == 2
    assert re.search(message, one_error_line(capsys))
    assert main(["train", str(tiny_h5ad), "--out", str(run_copy), "--resume", "--quiet"]) == 2
    assert re.search(message, one_error_line(capsys))


# -- 3. numerical faults --------------------------------------------------------------------------------------
def _overflowing_data(cell_step: int, batch_size: int = 32, seed: int = 0):
    """Data whose one cell holds values so large that the Gaussian reconstruction term overflows float32,
    placed in the batch of 0-based step ``cell_step`` (the engine's permutation of the same seed and size).
    Train it with ``augment='none'``: neighbor copies would carry the cell into other steps' batches."""
    from cplmix_explorer.data.preprocess import prepare
    from cplmix_explorer.train.engine import Trainer, build_module

    adata = mixture_counts(n_cells=600, n_genes=40, n_types=3)  # 16 steps an epoch: step 7 holds new cells
    adata.X = adata.X.toarray() + 0.5  # not counts: used as it is
    config = small_config(seed=seed, batch_size=batch_size, augment="none")
    prepared = prepare(adata, config)
    trainer = Trainer(build_module(config, prepared.n_genes), prepared, config)
    earlier = set(torch.cat([trainer._batch_for_step(s) for s in range(cell_step)]).tolist())
    cell = next(c for c in trainer._batch_for_step(cell_step).tolist() if c not in earlier)
    adata.X[cell, :] = 1e30
    return adata


def test_overflow_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    adata = _overflowing_data(cell_step=7)
    path = tmp_path / "overflow.h5ad"
    adata.write_h5ad(path)
    run_dir = tmp_path / "run"
    code = main(["train", str(path), "--out", str(run_dir), "--steps", "30", "--checkpoint-every", "5", "--quiet",
                 "--seed", "0", "--augment", "none", *SMALL])
    assert code == 2
    line = one_error_line(capsys)
    assert "non-finite loss at step 8 (term: reconstruction_arm0, reconstruction_arm1" in line
    assert checkpoint_step(run_dir / CHECKPOINT_NAME) == 5
    model = CplMixVAE.load(run_dir, path)
    assert all(torch.isfinite(p).all() for p in model.module.parameters())


def test_restarts_give_up_on_a_fault_that_repeats(tmp_path):
    adata = _overflowing_data(cell_step=7)
    model = CplMixVAE(adata, config=small_config(nan_restarts=2, checkpoint_every=5, log_every=1, augment="none"))
    restarts = []
    model.events.subscribe(lambda e: restarts.append(e) if isinstance(e, TrainingRestarted) else None)
    with pytest.warns(UserWarning, match="restarting from the checkpoint at step 5"):
        with pytest.raises(NonFiniteLossError) as failure:
            model.train(steps=30, progress=False)
    assert failure.value.step == 8
    assert [(e.failed_step, e.start_step, e.restarts_left) for e in restarts] == [(8, 5, 1), (8, 5, 0)]
    assert [e.learning_rate for e in restarts] == pytest.approx([5e-4, 2.5e-4])


@pytest.mark.parametrize(
    "device, fast_path",
    [
        ("cpu", "eager"),
        pytest.param("cuda", "graph", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
    ],
)
def test_diverged_weights_restart_from_the_last_good_checkpoint_with_a_lower_learning_rate(tmp_path, device, fast_path):
    """Weights turned NaN mid-run (what a diverged update leaves): the run goes back to its last checkpoint,
    halves the learning rate, says so, and completes (on CUDA the step graph is captured again)."""
    config = small_config(steps=30, checkpoint_every=5, log_every=1, nan_restarts=1, lr=2e-3, seed=2,
                          device=device, fast_path=fast_path)
    seen = []

    def break_weights_once(model):
        def on_event(event):
            seen.append(event)
            if isinstance(event, StepMetrics) and event.last_step == 12 and not any(isinstance(e, TrainingRestarted) for e in seen):
                with torch.no_grad():
                    model.module.decoder_output.bias.fill_(float("nan"))

        model.events.subscribe(on_event)

    with pytest.warns(UserWarning, match=r"non-finite loss at step 13 .*restarting from the checkpoint at step 10 with learning rate 0\.001"):
        outcome = train_run(mixture_counts(n_cells=120, n_genes=40, n_types=3), tmp_path / "run", config,
                            progress=False, on_model=break_weights_once)
    assert outcome.result.status == "completed" and outcome.result.step == 30
    restarted = [e for e in seen if isinstance(e, TrainingRestarted)]
    assert len(restarted) == 1 and restarted[0].start_step == 10 and restarted[0].failed_step == 13
    assert "reconstruction_arm0" in restarted[0].terms
    assert outcome.metrics["nan_restarts"] == [
        {"failed_step": 13, "terms": restarted[0].terms, "restarted_from": 10, "learning_rate": pytest.approx(1e-3)}
    ]
    assert list(outcome.result.history_steps) == list(range(1, 31))  # the abandoned steps are not kept
    assert all(torch.isfinite(p).all() for p in outcome.model.module.parameters())
    saved = read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert saved.step == 30
    # a resume keeps the lower full rate (the rate of the last step is the end of its decay)
    assert saved.optimizer_state["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)


def test_nan_restart_options_are_cli_flags(tiny_h5ad, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_h5ad), "--out", str(run_dir), "--steps", "3", "--quiet", "--nan-restarts", "2",
                 "--nan-restart-lr-factor", "0.25", *SMALL]) == 0
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["nan_restarts"] == 2 and config["nan_restart_lr_factor"] == 0.25
    assert main(["train", str(tiny_h5ad), "--out", str(tmp_path / "x"), "--nan-restart-lr-factor", "1.5"]) == 2
    assert "invalid value for --nan-restart-lr-factor: must be less than 1.0" in one_error_line(capsys)
