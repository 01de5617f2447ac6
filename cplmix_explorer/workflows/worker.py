"""Training and pruning in a child process of their own, their metric events forwarded to this process.

What the served app trains and prunes with. Training inside the server process ran slower than ``cplmix train``
with the same options, from the process state alone: once datashader had drawn a cell map, its numba kernels
start GNU OpenMP's thread pool from the system's libgomp, next to the copy torch ships
(``benchmarks/app_overhead.py``; figures in benchmarks/HISTORY.md). A spawned child starts clean, so it trains
as fast as the CLI, whatever the app's sessions have imported or drawn; its memory goes back to the system
when it ends; and no Python work of the server (sessions, plots, the GIL) competes with the training loop.

:class:`ProcessTraining` (``train_run``) and :class:`ProcessPruning` (``prune`` of a saved model) are the
engine side only (no UI): ``run`` blocks until the child ends, publishing the child's events on ``self.events``
as they arrive and passing stop / pause / resume requests of a :class:`TrainingControl` to the child between
its steps. Errors come back as one line (a
:class:`CplmixError` for a user mistake, a :class:`TrainingProcessError` with the exception's type and first
line otherwise, its trace on the server's stderr); a child that dies without a word (killed, out of memory) is
reported with its exit code or signal.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import threading
import traceback
from pathlib import Path

import torch

from ..api import CplMixVAE, prepare_for_model
from ..config import CplMixConfig
from ..errors import CplmixError, describe_failure
from ..threads import resolve_threads
from ..train.events import EventBus, TrainingControl
from . import pruning
from .run import METRICS_FILE, RunOutcome, load_run, train_run

#: Cores a child job leaves to the app's server when the ``threads`` option is unset.
APP_RESERVED_CORES = 1
#: Seconds between checks of the control object and of the child being alive.
POLL_SECONDS = 0.2
#: Seconds the child gets to finish after its last message before it is terminated.
EXIT_GRACE_SECONDS = 30.0


class TrainingProcessError(RuntimeError):
    """The training process failed other than by a user mistake (its exception, or its unexpected end)."""


class ChildJob:
    """``target(control, send, *args)`` in a spawned child process; ``send(kind, payload)`` reaches this process.

    Subclasses name the target (a static method ``target``, which the child imports by name) and turn its return value
    into the job's outcome in :meth:`_outcome`. Messages of kind 'event' are published on ``events``; other kinds
    go to :meth:`_on_message`. ``threads``: torch's CPU thread count in the child (default: this process's).
    """

    target = None

    def __init__(self, args: tuple, threads: int | None = None):
        self.args = args
        self.threads = int(threads or torch.get_num_threads())
        self.events = EventBus()
        self.process: multiprocessing.process.BaseProcess | None = None

    def run(self, control: TrainingControl | None = None):
        """Run the target in the child, forwarding its messages; returns :meth:`_outcome` of its result.
        Blocks: call it from a worker thread."""
        control = control or TrainingControl()
        context = multiprocessing.get_context("spawn")  # fork is unsafe with threads, torch and CUDA
        messages, commands = context.Queue(), context.Queue()
        self.process = context.Process(
            target=_child_main, name="cplmix-job", daemon=True,
            args=(type(self).target, self.args, self.threads, messages, commands, os.getpid()),
        )
        self.process.start()
        final = None
        try:
            final = self._forward(control, messages, commands)
        finally:
            commands.put(None)
            commands.cancel_join_thread()  # never wait at exit on a request the child no longer reads
            self.process.join(EXIT_GRACE_SECONDS if final is not None else 1.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join()
            messages.close()
            commands.close()
        kind, payload = final
        if kind == "user_error":
            raise CplmixError(payload)
        if kind == "crash":
            raise TrainingProcessError(payload)
        return self._outcome(payload)

    def _outcome(self, result):
        return result

    def _on_message(self, kind: str, payload) -> None:
        pass

    def _forward(self, control: TrainingControl, messages, commands) -> tuple:
        """Publish the child's messages until its final one; pass control requests on."""
        stop_sent, paused_sent = False, False
        while True:
            if control.stop_requested and not stop_sent:
                commands.put(("stop", control.stop_reason or "stopped by request"))
                stop_sent = True
            if control.paused != paused_sent and not stop_sent:
                commands.put(("pause" if control.paused else "resume", ""))
                paused_sent = control.paused
            try:
                message = messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self.process.is_alive():
                    try:  # the last messages may have arrived just before the end
                        message = messages.get(timeout=POLL_SECONDS)
                    except queue.Empty:
                        code = self.process.exitcode
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        raise TrainingProcessError(
                            f"the training process ended unexpectedly ({how}; out of memory?) without finishing its run"
                        ) from None
                else:
                    continue
            kind, payload = message
            if kind == "event":
                self.events.publish(payload)
            elif kind in FINAL_KINDS:
                return message
            else:
                self._on_message(kind, payload)


#: The child's last message: its result, a user mistake's one line, or another failure's one line.
FINAL_KINDS = ("done", "user_error", "crash")


class ProcessTraining(ChildJob):
    """``train_run(source, run_dir, config)`` in a spawned child process.

    source: a bundled dataset name, an .h5ad path or an AnnData (pickled to the child); :meth:`run` returns the
    run's :class:`~cplmix_explorer.workflows.run.RunOutcome` with the model loaded back from the run folder onto
    ``config``'s device. ``data``: the AnnData this process already holds for ``source`` (the app's session
    data): it is prepared here, once, in :meth:`run`; the child trains on that preparation (``prepared``) and
    the model loaded back is built on ``data`` and the same preparation. ``events`` publishes the child's
    metric events in this process (subscribe before :meth:`run`).
    """

    def __init__(self, source, run_dir: str | os.PathLike, config: CplMixConfig, threads: int | None = None,
                 data=None):
        self.source, self.run_dir, self.config = source, Path(run_dir), config.copy()
        self.data = data
        self.prepared = None
        threads = threads or resolve_threads(self.config.threads, APP_RESERVED_CORES)
        super().__init__((source, str(self.run_dir), self.config.to_dict(), None), threads)

    def run(self, control: TrainingControl | None = None):
        if self.data is not None and self.prepared is None:
            self.prepared = prepare_for_model(self.data, self.config)
            self.args = (self.source, str(self.run_dir), self.config.to_dict(), self.prepared)
        return super().run(control)

    @staticmethod
    def target(control, send, source, run_dir: str, config: dict, prepared):
        outcome = train_run(source, run_dir, CplMixConfig.from_dict(config), progress=False, control=control,
                            on_model=lambda model: model.events.subscribe(lambda event: send("event", event)),
                            reserved_cores=APP_RESERVED_CORES, prepared=prepared)
        return outcome.result

    def _outcome(self, result):
        metrics_path = self.run_dir / METRICS_FILE
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {"status": result.status}
        model = load_run(self.run_dir, self.data if self.data is not None else self.source, device=self.config.device,
                         prepared=self.prepared)
        return RunOutcome(model=model, result=result, metrics=metrics, run_dir=self.run_dir)


class ProcessPruning(ChildJob):
    """:func:`~cplmix_explorer.workflows.pruning.prune` of the model saved in ``run_dir`` (on ``adata``), in a
    spawned child; the pruned model is saved there. :meth:`run` returns (pruned model loaded back onto
    ``device``, :class:`~cplmix_explorer.workflows.pruning.PruningResult`); each round reaches ``on_round``
    in this process as it ends. ``prepared``: ``adata`` as the saved model's data was prepared (the shown
    model's ``prepared``): the child and the model loaded back use it instead of preparing ``adata`` again."""

    def __init__(self, run_dir: str | os.PathLike, adata, device: str, options: dict, on_round=None,
                 threads: int | None = None, prepared=None):
        self.run_dir, self.adata, self.device, self.on_round = Path(run_dir), adata, str(device), on_round
        self.prepared = prepared
        super().__init__((str(self.run_dir), adata, self.device, dict(options), prepared), threads)

    @staticmethod
    def target(control, send, run_dir: str, adata, device: str, options: dict, prepared):
        model = CplMixVAE.load(run_dir, adata, device=device, prepared=prepared)
        model.reserved_cores = APP_RESERVED_CORES
        model.events.subscribe(lambda event: send("event", event))
        result = pruning.prune(model, control=control, progress=False, on_round=lambda round_: send("round", round_),
                               **options)
        model.save(run_dir)
        return result

    def _on_message(self, kind: str, payload) -> None:
        if kind == "round" and self.on_round is not None:
            self.on_round(payload)

    def _outcome(self, result):
        return CplMixVAE.load(self.run_dir, self.adata, device=self.device, prepared=self.prepared), result


def _child_main(target, args: tuple, threads: int, messages, commands, parent_pid: int) -> None:
    """The child: run ``target(control, send, *args)``, then send one final message: ('done', its result),
    ('user_error', text) or ('crash', text)."""
    torch.set_num_threads(threads)
    control = TrainingControl()

    def listen() -> None:  # requests from the parent; stop when the parent is gone
        while True:
            try:
                command = commands.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    control.stop("the app's process ended")
                    return
                continue
            except (EOFError, OSError):
                control.stop("the app's process ended")
                return
            if command is None:
                return
            kind, reason = command
            if kind == "stop":
                control.stop(reason)
            elif kind == "pause":
                control.pause()
            elif kind == "resume":
                control.resume()

    threading.Thread(target=listen, name="cplmix-commands", daemon=True).start()

    def send(kind: str, payload) -> None:
        messages.put((kind, payload))

    try:
        final = ("done", target(control, send, *args))
    except CplmixError as error:
        final = ("user_error", str(error))
    except BaseException as error:  # a bug or an environment failure: the trace to stderr, one line to the app
        traceback.print_exc()
        final = ("crash", describe_failure(error))
    messages.put(final)
    if os.getppid() != parent_pid:  # nobody reads any more: do not wait for the pipe at exit
        messages.cancel_join_thread()
    messages.close()
