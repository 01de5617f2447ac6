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

from .config import DATA_OPTIONS, AugmenterConfig, CplMixConfig, OptionSet, PruningOptions, cli_flag
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


def add_config_arguments(
    parser: argparse.ArgumentParser, names: Sequence[str] | None = None, config_class: type[OptionSet] = CplMixConfig
) -> None:
    """One flag per option of ``config_class`` (default :class:`CplMixConfig`), typed and documented from
    its declaration."""
    config = config_class()
    not_flags = _NOT_FLAGS if config_class is CplMixConfig else set()
    for name in names or [n for n in config.param if n != "name" and n not in not_flags]:
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
        args.run_dir, min_consensus=args.min_consensus, min_types=args.min_types, fine_tune_steps=args.fine_tune_steps,
        progress=not args.quiet, source=args.data,
    )
    _print_json({**result.to_dict(), "k": int(model.module.n_types)})
    return 0


#: Options of CplMixConfig that ``cplmix augmenter train`` takes: the data path, the device and the seed.
AUGMENTER_DATA_OPTIONS = (*DATA_OPTIONS, "device", "seed")


@command("augmenter")
def run_augmenter(args: argparse.Namespace) -> int:
    from .model.generative import train_generative_augmenter

    if args.action == "train":
        config = CplMixConfig().update(
            **{name: getattr(args, name) for name in AUGMENTER_DATA_OPTIONS if getattr(args, name) is not None}
        )
        options = AugmenterConfig().update(
            **{name: getattr(args, name) for name in AugmenterConfig.param if name != "name" and getattr(args, name, None) is not None}
        )
        training = train_generative_augmenter(args.data, args.out, config, options, progress=not args.quiet)
        if not args.quiet:
            _print_json({
                "augmenter": str(training.path),
                "steps": options.steps,
                "genes": len(training.augmenter.genes),
                "final_losses": {name: values[-1] for name, values in training.history.items() if name != "step"},
                "use_with": f"cplmix train {args.data} --augment generative --augmenter-path {training.path}",
            })
    return 0


@command("bench")
def run_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmark

    result = run_benchmark(
        genes=args.genes, types=args.types, state_dim=args.state_dim, arms=args.arms, batch_size=args.batch_size,
        steps=args.steps, warmup=args.warmup, device=args.device, cells=args.cells, fast_path=args.fast_path,
        dense=args.dense, state_encoder=args.state_encoder,
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


def _finite_or_none(value):
    """JSON has no NaN: undefined numbers (an empty gene group's median) become null."""
    if isinstance(value, float) and value != value:
        return None
    return value


@command("traverse")
def run_traverse(args: argparse.Namespace) -> int:
    from .analysis import export
    from .analysis.traversal import check_gene_groups, compare_types, traverse
    from .train.run import load_run

    # everything that can be checked without the model is checked first: a mistake writes nothing
    file_format = export.output_format(args.out)
    check_gene_groups(args.genes)
    if args.cell is not None and len(args.type or []) > 1:
        raise CplmixError("--cell traverses one type; give one --type (or none: the cell's own type)")
    if not args.type and args.cell is None:
        raise CplmixError("give --type (an index or a label name) or --cell")
    size = tuple(args.size) if args.size is not None else None
    gene_labels = {"auto": "auto", "on": True, "off": False}[args.gene_labels]

    model = load_run(args.run_dir, source=args.data)
    options = dict(
        genes=args.genes, n_markers=args.markers, percentiles=tuple(args.percentiles), normalize=args.normalize,
        arm=args.arm, labels=args.labels,
    )
    if args.type and len(args.type) > 1:
        result = compare_types(model, args.type, args.dim, args.steps, **options)
        traversals = result.traversals
    else:
        result = traverse(model, args.type[0] if args.type else None, args.dim, args.steps, cell=args.cell, **options)
        traversals = [result]
    written = export.export(
        result, args.out, values=args.values, genes="all" if args.all_genes else "groups", dpi=args.dpi,
        max_genes_per_group=args.max_genes or None, figsize=size, cmap=args.cmap, gene_labels=gene_labels,
        mark_state=args.mark, title=args.title,
    )
    if not args.quiet:
        for caution in dict.fromkeys(w for t in traversals for w in t.warnings):  # a short run warns once, not per type
            print(f"cplmix: warning: {caution}", file=sys.stderr)
        _print_json({
            "written": [str(p) for p in written],
            "format": file_format,
            "dim": traversals[0].dim,
            "steps": traversals[0].steps,
            "normalization": traversals[0].normalization,
            "types": [
                {
                    "type": t.type, "label": t.type_label, "cell": t.cell, "n_cells": t.n_cells,
                    "state_range": [float(t.state[0]), float(t.state[-1])],
                    "warnings": list(t.warnings),
                    "arm_correlation": [_finite_or_none(v) for v in t.alignment["correlation"]],
                    "genes": [g.summary() for g in t.groups.values()],
                    "groups": [
                        {k: _finite_or_none(v) for k, v in row.items()}
                        for row in t.group_summary.reset_index().to_dict(orient="records")
                    ],
                }
                for t in traversals
            ],
        })
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``cplmix: error:`` line (exit 2) like every other user mistake,
    instead of the usage text followed by the error."""

    def error(self, message: str):
        raise CplmixError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    add_config_arguments(prune, config_class=PruningOptions)  # --min-consensus, --min-types, --steps
    prune.add_argument("--data", default=None, help="the data, when not where run.json says")
    prune.add_argument("--quiet", action="store_true")

    augmenter = sub.add_parser("augmenter", help="the generative augmenter: train one for --augment generative")
    augmenter_actions = augmenter.add_subparsers(dest="action", required=True, metavar="ACTION")
    augmenter_train = augmenter_actions.add_parser(
        "train", help="train a generative augmenter on an .h5ad file or a bundled dataset",
        description="Train the unsupervised generative augmenter (U-DAGAN style: adversarial, reconstruction, "
        "triplet and feature terms) that gives each arm its own type-preserving copy of a cell. Use the same "
        "data options (--genes, --normalize, --layer) as the cplmix train run that will use it.",
    )
    augmenter_train.add_argument("data", metavar="DATA", help="an .h5ad path or a bundled dataset name")
    augmenter_train.add_argument("--out", required=True, metavar="DIR", help="new folder for the trained augmenter")
    augmenter_train.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    add_config_arguments(augmenter_train, AUGMENTER_DATA_OPTIONS)
    add_config_arguments(augmenter_train, config_class=AugmenterConfig)

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
    bench.add_argument("--state-encoder", default=None, choices=CplMixConfig.param["state_encoder"].objects,
                       help=f"the state's encoder (default: {CplMixConfig.param['state_encoder'].default}, as in training)")

    datasets = sub.add_parser("datasets", help="list the bundled datasets")
    datasets.add_argument("--json", action="store_true")

    traverse = sub.add_parser(
        "traverse", help="sweep a state dimension of a type; write a heatmap (.png .svg .pdf) or table (.csv .parquet)",
        description="Keep a type fixed, sweep one continuous state dimension over the type's range, decode with "
        "every arm and export the reconstructed expression of the gene groups (MG | IEG | HKG) with per-gene "
        "scores. The suffix of --out picks the format; a table also writes NAME.scores.SUFFIX beside it.",
    )
    traverse.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by cplmix train")
    traverse.add_argument(
        "--type", action="append", metavar="T",
        help="a type index (0..K-1) or a label name of the run's labels column; repeat to compare types side by side",
    )
    traverse.add_argument("--dim", type=int, default=0, metavar="D", help="state dimension to sweep (default: 0)")
    traverse.add_argument("--steps", type=int, default=50, metavar="N", help="rows of the sweep (default: 50)")
    traverse.add_argument(
        "--genes", default="MG,IEG,HKG", metavar="GROUPS_OR_FILE",
        help="comma-separated gene groups in column order: MG (markers computed from the data), IEG, HKG, PRG, "
        "rPRG, dPRG, or a text file with one symbol a line (default: MG,IEG,HKG)",
    )
    traverse.add_argument("--out", required=True, metavar="FILE", help="output file: .png .svg .pdf .csv or .parquet")
    traverse.add_argument("--cell", default=None, metavar="NAME", help="hold the other state dimensions at this cell's state")
    traverse.add_argument("--labels", default=None, metavar="OBS_KEY", help="obs column naming the types (default: the run's)")
    traverse.add_argument("--data", default=None, help="the data, when not where run.json says")
    traverse.add_argument("--markers", type=int, default=20, metavar="N", help="marker genes in the MG group (default: 20)")
    traverse.add_argument(
        "--normalize", default="zscore", choices=["zscore", "minmax"],
        help="display form: z-score against all cells, or min-max per gene across the sweep (default: zscore)",
    )
    traverse.add_argument(
        "--percentiles", type=float, nargs=2, default=[2.0, 98.0], metavar=("LOW", "HIGH"),
        help="swept range within the type's state distribution (default: 2 98)",
    )
    traverse.add_argument("--arm", type=int, default=None, metavar="A", help="one arm instead of the arms' mean")
    figure = traverse.add_argument_group("figure options")
    figure.add_argument("--max-genes", type=int, default=30, metavar="N", help="most driven genes shown per group (0: all; default 30)")
    figure.add_argument("--size", type=float, nargs=2, default=None, metavar=("WIDTH", "HEIGHT"), help="figure size in inches")
    figure.add_argument("--cmap", default=None, help="matplotlib colour map (default: RdBu_r for zscore, viridis for minmax)")
    figure.add_argument("--gene-labels", default="auto", choices=["auto", "on", "off"], help="gene names under the columns")
    figure.add_argument("--mark", type=float, default=None, metavar="STATE", help="mark this state value with a line")
    figure.add_argument("--title", default=None, help="figure title (default: type and dimension; '' for none)")
    figure.add_argument("--dpi", type=int, default=300, help="resolution of PNG output (default: 300)")
    tables = traverse.add_argument_group("table options")
    tables.add_argument("--values", default="expression", choices=["expression", "normalized"], help="matrix values")
    tables.add_argument("--all-genes", action="store_true", help="every model gene, not only the gene groups")
    traverse.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    return f"cplmix: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    warnings.formatwarning = _one_line_warning
    try:
        args = parser.parse_args(argv)
        return COMMANDS[args.command](args)
    except CplmixError as error:
        print(f"cplmix: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cplmix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
