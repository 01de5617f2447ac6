"""The ``cplmix`` command: a thin layer over the Python API (same functions, same configuration object).

User mistakes print one line ``cplmix: error: ...`` and exit with code 2; nothing is left half written.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

import param

from .config import CplMixConfig, cli_flag
from .errors import CplmixError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(function):
        COMMANDS[name] = function
        return function

    return register


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# -- configuration options as flags ------------------------------------------------------------------------
#: Options that are not training hyperparameters of ``train`` (given positionally or elsewhere).
_NOT_FLAGS = {"steps", "epochs"}


def add_config_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per :class:`CplMixConfig` option, typed and documented from its declaration."""
    config = CplMixConfig()
    for name in names or [n for n in config.param if n != "name" and n not in _NOT_FLAGS]:
        parameter = config.param[name]
        flag = cli_flag(name)
        help_text = f"{parameter.doc} (default: {getattr(config, name)})"
        if isinstance(parameter, param.Boolean):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(parameter, param.Selector):
            parser.add_argument(flag, dest=name, choices=parameter.objects, default=None, help=help_text)
        elif isinstance(parameter, param.Integer):
            parser.add_argument(flag, dest=name, type=int, default=None, metavar="N", help=help_text)
        elif isinstance(parameter, param.Number):
            parser.add_argument(flag, dest=name, type=float, default=None, metavar="X", help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, base: CplMixConfig | None = None) -> CplMixConfig:
    config = base.copy() if base is not None else CplMixConfig()
    values = {name: getattr(args, name) for name in config.param if name != "name" and getattr(args, name, None) is not None}
    if values.get("epochs") is not None:
        values["steps"] = config.steps  # epochs take precedence; steps stay at their default
    return config.update(**values)


# -- commands ----------------------------------------------------------------------------------------------
@command("train")
def run_train(args: argparse.Namespace) -> int:
    from .train.events import TrainingControl
    from .train.run import train_run

    config = config_from_args(args)
    control = TrainingControl()

    def on_signal(signum, _frame):
        control.stop(f"interrupted by {signal.Signals(signum).name}")
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcome = train_run(
            args.data, args.out, config, resume=args.resume, progress=not args.quiet, control=control,
            command=sys.argv, write_outputs_when_stopped=False,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if outcome.result.status != "completed":
        print(
            f"cplmix: {control.stop_reason or 'stopped'} at step {outcome.result.step}; checkpoint kept in "
            f"{args.out}; continue with: cplmix train {args.data} --out {args.out} --resume",
            file=sys.stderr,
        )
        return 130
    summary = {k: v for k, v in outcome.metrics.items() if k not in ("history", "evaluations", "per_arm")}
    if not args.quiet:
        _print_json({"run_dir": str(outcome.run_dir), **summary})
    return 0


@command("evaluate")
def run_evaluate(args: argparse.Namespace) -> int:
    from .train.run import evaluate_run

    metrics = evaluate_run(args.run_dir, labels=args.labels, source=args.data)
    _print_json(metrics)
    return 0


@command("prune")
def run_prune(args: argparse.Namespace) -> int:
    from .train.run import prune_run

    result, model = prune_run(
        args.run_dir, min_consensus=args.min_consensus, min_types=args.min_types, fine_tune_steps=args.steps,
        progress=not args.quiet, source=args.data,
    )
    _print_json({**result.to_dict(), "k": int(model.module.n_types)})
    return 0


@command("bench")
def run_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmark

    result = run_benchmark(
        genes=args.genes, types=args.types, state_dim=args.state_dim, arms=args.arms, batch_size=args.batch_size,
        steps=args.steps, warmup=args.warmup, device=args.device, cells=args.cells, fast_path=args.fast_path,
        dense=args.dense,
    )
    _print_json(result)
    return 0


@command("datasets")
def run_datasets(args: argparse.Namespace) -> int:
    """List the bundled datasets from the registry (sizes are stored there: nothing is loaded)."""
    from .data.bundled import list_datasets

    rows = [
        {
            "name": dataset.name,
            "n_cells": dataset.n_cells,
            "n_genes": dataset.n_genes,
            "labels": list(dataset.label_columns),
            "description": dataset.description,
            "provenance": dataset.provenance,
        }
        for dataset in list_datasets()
    ]
    if args.json:
        _print_json({"datasets": rows})
        return 0
    table = [("NAME", "CELLS x GENES", "LABELS", "DESCRIPTION")]
    table += [
        (row["name"], f"{row['n_cells']:,} x {row['n_genes']:,}", ", ".join(row["labels"]) or "-", row["description"])
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(3)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line[:3], widths)) + "  " + line[3])
    return 0


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    """The arguments of ``cplmix train`` (also ``python -m cplmix_explorer.train`` under torchrun)."""
    train.add_argument("data", metavar="DATA", help="an .h5ad path or a bundled dataset name (cplmix datasets)")
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for checkpoints and results")
    schedule = train.add_mutually_exclusive_group()
    schedule.add_argument("--steps", type=int, default=None, metavar="N", help="training steps (default: 5000)")
    schedule.add_argument("--epochs", type=float, default=None, metavar="E", help="training epochs instead of steps")
    train.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    add_config_arguments(train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cplmix", description="Cell types and their continuous states with coupled mixture VAEs (cpl-mixVAE)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model on an .h5ad file or a bundled dataset")
    add_train_arguments(train)

    evaluate = sub.add_parser("evaluate", help="print a run's ACC, ARI, NMI, KL, consensus and K as JSON")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--labels", default=None, metavar="OBS_KEY", help="obs column of known labels")
    evaluate.add_argument("--data", default=None, help="the data, when not where run.json says")

    prune = sub.add_parser("prune", help="remove the types the arms agree on least, fine-tuning between rounds")
    prune.add_argument("run_dir", metavar="RUN_DIR")
    prune.add_argument("--min-consensus", type=float, default=0.95, help="agreement every type must reach (default 0.95)")
    prune.add_argument("--min-types", type=int, default=2, help="never prune below this many types (default 2)")
    prune.add_argument("--steps", type=int, default=None, help="fine-tuning steps per round (default: steps / 10)")
    prune.add_argument("--data", default=None, help="the data, when not where run.json says")
    prune.add_argument("--quiet", action="store_true")

    bench = sub.add_parser("bench", help="measure training throughput on generated data (JSON)")
    bench.add_argument("--genes", type=int, default=5000)
    bench.add_argument("--types", type=int, default=115)
    bench.add_argument("--state-dim", type=int, default=2)
    bench.add_argument("--arms", type=int, default=2)
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--steps", type=int, default=200, help="timed steps after warm-up")
    bench.add_argument("--warmup", type=int, default=20)
    bench.add_argument("--cells", type=int, default=None, help="generated cells (default: max(4 x batch, 10000))")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--fast-path", default="auto", choices=["auto", "eager", "graph", "compile"])
    bench.add_argument("--dense", action="store_true", help="store the data dense instead of CSR")

    datasets = sub.add_parser("datasets", help="list the bundled datasets")
    datasets.add_argument("--json", action="store_true")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    return f"cplmix: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        return COMMANDS[args.command](args)
    except CplmixError as error:
        print(f"cplmix: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cplmix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
