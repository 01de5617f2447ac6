"""The ``cplmix`` command: a thin layer over the Python API (same functions, same configuration object).

User mistakes print one line ``cplmix: error: ...`` and exit with code 2; nothing is left half written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import param

from .config import (
    BENCH_CONFIG_DEFAULTS,
    DATA_OPTIONS,
    AugmenterConfig,
    BenchOptions,
    CplMixConfig,
    OptionSet,
    PruningOptions,
    TraversalOptions,
    cli_flag,
)
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


def _default_text(value) -> str:
    return "unset" if value is None else str(value)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    names: Sequence[str] | None = None,
    config_class: type[OptionSet] = CplMixConfig,
    defaults: dict | None = None,
) -> None:
    """One flag per option of ``config_class`` (default :class:`CplMixConfig`), typed and documented from
    its declaration (help: the option's doc and its default, from ``defaults`` where given there)."""
    config = config_class()
    defaults = defaults or {}
    not_flags = _NOT_FLAGS if config_class is CplMixConfig else set()
    for name in names or [n for n in config.param if n != "name" and n not in not_flags]:
        parameter = config.param[name]
        flag = cli_flag(name)
        default = defaults.get(name)
        help_text = f"{parameter.doc} (default: {_default_text(defaults.get(name, getattr(config, name)))})"
        # argparse's % formatting: a literal percent sign in a doc must be doubled
        help_text = help_text.replace("%", "%%")
        if isinstance(parameter, param.Boolean):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(parameter, param.Selector):
            parser.add_argument(flag, dest=name, choices=parameter.objects, default=default, help=help_text)
        elif isinstance(parameter, param.NumericTuple):
            parser.add_argument(flag, dest=name, type=float, nargs=parameter.length, default=default, metavar="X", help=help_text)
        elif isinstance(parameter, param.Integer):
            parser.add_argument(flag, dest=name, type=int, default=default, metavar="N", help=help_text)
        elif isinstance(parameter, param.Number):
            parser.add_argument(flag, dest=name, type=float, default=default, metavar="X", help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=default, help=help_text)


def options_from_args(args: argparse.Namespace, config_class: type[OptionSet]) -> OptionSet:
    """The options of ``config_class`` the command line gave (flags from :func:`add_config_arguments`), the
    declared defaults for the others; a bad value raises a one-line error naming its flag."""
    given = {}
    for name, parameter in config_class.param.objects().items():
        value = getattr(args, name, None)
        if name != "name" and value is not None:
            given[name] = tuple(value) if isinstance(parameter, param.NumericTuple) else value
    return config_class().update(names=cli_flag, **given)


def config_from_args(args: argparse.Namespace, base: CplMixConfig | None = None) -> CplMixConfig:
    config = base.copy() if base is not None else CplMixConfig()
    values = {name: getattr(args, name) for name in config.param if name != "name" and getattr(args, name, None) is not None}
    if values.get("epochs") is not None:
        values["steps"] = config.steps  # epochs take precedence; steps stay at their default
    return config.update(names=cli_flag, **values)


# -- commands ----------------------------------------------------------------------------------------------
@command("train")
def run_train(args: argparse.Namespace) -> int:
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .train.events import TrainingControl
    from .workflows.run import train_run

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
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .workflows.run import evaluate_run

    metrics = evaluate_run(args.run_dir, labels=args.labels, source=args.data)
    _print_json(metrics)
    return 0


@command("prune")
def run_prune(args: argparse.Namespace) -> int:
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .workflows.run import prune_run

    result, model = prune_run(
        args.run_dir, min_consensus=args.min_consensus, min_types=args.min_types, fine_tune_steps=args.fine_tune_steps,
        progress=not args.quiet, source=args.data,
    )
    _print_json({**result.to_dict(), "k": int(model.module.n_types)})
    return 0


#: Options of CplMixConfig that ``cplmix bench`` takes, with the benchmark's own defaults where they differ.
BENCH_CONFIG_OPTIONS = ("n_genes", "n_types", "state_dim", "n_arms", "batch_size", "device", "fast_path", "state_encoder",
                        "threads")
#: Options of CplMixConfig that ``cplmix augmenter train`` takes: the data path, the device and the seed.
AUGMENTER_DATA_OPTIONS = (*DATA_OPTIONS, "device", "seed")


@command("augmenter")
def run_augmenter(args: argparse.Namespace) -> int:
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .train.augmenter import train_generative_augmenter

    if args.action == "train":
        config = CplMixConfig().update(
            names=cli_flag,
            **{name: getattr(args, name) for name in AUGMENTER_DATA_OPTIONS if getattr(args, name) is not None},
        )
        options = AugmenterConfig().update(
            names=cli_flag,
            **{name: getattr(args, name) for name in AugmenterConfig.param if name != "name" and getattr(args, name, None) is not None},
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
    # the options the benchmark shares with training are checked as `cplmix train` checks them, by their flags
    shared = CplMixConfig().update(names=cli_flag, **BENCH_CONFIG_DEFAULTS).update(
        names=cli_flag, **{name: getattr(args, name) for name in BENCH_CONFIG_OPTIONS if getattr(args, name) is not None}
    )
    options = options_from_args(args, BenchOptions)
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .workflows.bench import run_benchmark

    result = run_benchmark(
        genes=shared.n_genes, types=shared.n_types, state_dim=shared.state_dim, arms=shared.n_arms,
        batch_size=shared.batch_size, steps=options.steps, warmup=options.warmup, device=shared.device, cells=options.cells,
        fast_path=shared.fast_path, dense=options.dense, state_encoder=shared.state_encoder, threads=shared.threads,
    )
    _print_json(result)
    return 0


@command("datasets")
def run_datasets(args: argparse.Namespace) -> int:
    """List the bundled datasets from the registry (sizes are stored there: nothing is loaded)."""
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .data.bundled import list_datasets

    rows = [
        {
            "name": dataset.name,
            "n_cells": dataset.n_cells,
            "n_genes": dataset.n_genes,
            "labels": list(dataset.label_columns),
            "label_values": dict(zip(dataset.label_columns, dataset.label_counts)),
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
        (dataset.name, f"{dataset.n_cells:,} x {dataset.n_genes:,}", dataset.labels_text() or "-", dataset.description)
        for dataset in list_datasets()
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
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .analysis import export
    from .analysis.traversal import check_gene_groups, compare_types, traverse
    from .workflows.run import load_run

    # everything that can be checked without the model is checked first: a mistake writes nothing
    traversal = options_from_args(args, TraversalOptions)
    file_format = export.output_format(args.out)
    check_gene_groups(traversal.genes)
    if args.cell is not None and len(args.type or []) > 1:
        raise CplmixError("--cell traverses one type; give one --type (or none: the cell's own type)")
    if not args.type and args.cell is None:
        raise CplmixError("give --type (an index or a label name) or --cell")
    size = tuple(args.size) if args.size is not None else None
    gene_labels = {"auto": "auto", "on": True, "off": False}[args.gene_labels]

    model = load_run(args.run_dir, source=args.data)
    options = dict(
        genes=traversal.genes, n_markers=traversal.n_markers, percentiles=traversal.percentiles,
        normalize=traversal.normalize, arm=traversal.arm, labels=args.labels,
    )
    if args.type and len(args.type) > 1:
        result = compare_types(model, args.type, traversal.dim, traversal.steps, **options)
        traversals = result.traversals
    else:
        result = traverse(model, args.type[0] if args.type else None, traversal.dim, traversal.steps, cell=args.cell, **options)
        traversals = [result]
    written = export.export(
        result, args.out, values=args.values, genes="all" if args.all_genes else "groups", dpi=args.dpi,
        max_genes_per_group=traversal.max_genes or None, figsize=size, cmap=args.cmap, gene_labels=gene_labels,
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


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN_DIR and --data: the run a command opens (with :func:`_open_run`)."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by cplmix train")
    parser.add_argument("--data", default=None, help="the data, when not where run.json says")


def _open_run(args: argparse.Namespace):
    """The trained model of RUN_DIR, read with its data (``--data`` when it moved). A folder that is no run,
    a damaged checkpoint or missing data raise a CplmixError, which ``main`` prints as one line."""
    from .workflows.run import load_run  # lazy: 'cplmix --help' and argument errors load no torch or anndata

    return load_run(args.run_dir, source=args.data)


@command("markers")
def run_markers(args: argparse.Namespace) -> int:
    # lazy: 'cplmix --help' and argument errors load no torch or anndata
    from .analysis import export
    from .analysis.markers import check_top, dotplot_figure, marker_statistics
    from .files import atomic_write_bytes

    top = check_top(args.top)  # checked before the model is loaded: a mistake writes nothing
    file_format = export.output_format(args.out, ("csv", "png", "svg", "pdf")) if args.out is not None else None
    model = _open_run(args)
    names = model.type_names()
    statistics = marker_statistics(model)
    if file_format is None:
        table = statistics.table(top, names)
        shown = table[["name", "rank", "gene", "score", "logfoldchange", "pval_adj", "frac_in", "frac_out"]].rename(
            columns={"logfoldchange": "log2FC", "frac_in": "in", "frac_out": "out"}
        )
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        return 0
    if file_format == "csv":
        payload = export.table_bytes(statistics.table(top, names), "csv")
    else:
        payload = export.figure_bytes(dotplot_figure(statistics, top, names), file_format, dpi=args.dpi)
    out = Path(args.out).expanduser()
    atomic_write_bytes(out, payload)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


@command("rename")
def run_rename(args: argparse.Namespace) -> int:
    model = _open_run(args)
    names = model.rename_type(args.type, args.name, run_dir=args.run_dir)
    for index, name in enumerate(names):
        print(f"{index}\t{name}")
    return 0


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    """The arguments of ``cplmix train`` (also ``python -m cplmix_explorer.train`` under torchrun)."""
    train.add_argument("data", metavar="DATA", help="an .h5ad path or a bundled dataset name (cplmix datasets)")
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for checkpoints and results")
    schedule = train.add_mutually_exclusive_group()
    schedule.add_argument("--steps", type=int, default=None, metavar="N", help=f"training steps (default: {CplMixConfig().steps})")
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
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by cplmix train")
    evaluate.add_argument("--labels", default=None, metavar="OBS_KEY", help="obs column of known labels")
    evaluate.add_argument("--data", default=None, help="the data, when not where run.json says")

    prune = sub.add_parser("prune", help="remove the types the arms agree on least, fine-tuning between rounds")
    prune.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by cplmix train (pruned in place)")
    add_config_arguments(prune, config_class=PruningOptions)  # --min-consensus, --min-types, --steps
    prune.add_argument("--data", default=None, help="the data, when not where run.json says")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")

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

    bench = sub.add_parser(
        "bench", help="measure training throughput on generated data (JSON)",
        description="Train the real model on generated Poisson counts and print its throughput (steps and cells "
        "per second after the warm-up), peak memory and the one-off cost of the initial partition as JSON. "
        "The model options are those of cplmix train; defaults here are the benchmark's shape.",
    )
    add_config_arguments(bench, BENCH_CONFIG_OPTIONS, defaults=BENCH_CONFIG_DEFAULTS)
    add_config_arguments(bench, config_class=BenchOptions)  # --steps, --warmup, --cells, --dense

    markers = sub.add_parser(
        "markers", help="each type's top marker genes (Wilcoxon, one vs rest): a table, a .csv or a dot plot",
        description="Rank every gene of the model for every type against all other cells with a Wilcoxon "
        "rank-sum test on the log-expression (as scanpy's rank_genes_groups 'wilcoxon'), and print the top "
        "markers of each type, or write them as .csv (all columns) or a dot plot (.png .svg .pdf).",
    )
    _add_run_arguments(markers)
    markers.add_argument("--top", type=int, default=5, metavar="N", help="markers per type (default: 5)")
    markers.add_argument("--out", default=None, metavar="FILE", help="write a table (.csv) or a dot plot (.png .svg .pdf)")
    markers.add_argument("--dpi", type=int, default=300, help="resolution of PNG output (default: 300)")
    markers.add_argument("--quiet", action="store_true", help="print nothing when writing a file")

    rename = sub.add_parser("rename", help="name a type of a run (kept in the run folder and its result.h5ad)")
    _add_run_arguments(rename)
    rename.add_argument("type", metavar="TYPE", help="the type: its index or its current name")
    rename.add_argument("name", metavar="NAME", help="the new name ('' goes back to the automatic name)")

    datasets = sub.add_parser("datasets", help="list the bundled datasets")
    datasets.add_argument("--json", action="store_true", help="print the list as JSON (default: a table)")

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
    traversal_options = [n for n in TraversalOptions.param if n not in ("name", "max_genes")]
    add_config_arguments(traverse, traversal_options, config_class=TraversalOptions)  # --dim, --steps, --genes, ...
    traverse.add_argument("--out", required=True, metavar="FILE", help="output file: .png .svg .pdf .csv or .parquet")
    traverse.add_argument("--cell", default=None, metavar="NAME", help="hold the other state dimensions at this cell's state")
    traverse.add_argument("--labels", default=None, metavar="OBS_KEY", help="obs column naming the types (default: the run's)")
    traverse.add_argument("--data", default=None, help="the data, when not where run.json says")
    figure = traverse.add_argument_group("figure options")
    add_config_arguments(figure, ["max_genes"], config_class=TraversalOptions)
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


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    return f"cplmix: warning: {message}\n"


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it again at exit does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured): nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = one_line_warning
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            return COMMANDS[args.command](args)
        except CplmixError as error:
            print(f"cplmix: error: {error}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            print("cplmix: interrupted", file=sys.stderr)
            return 130
        finally:  # within the try, so a reader that went away (`cplmix ... | head`) is caught here
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader of our output closed it, as `head` does: stop quietly, as command-line tools do
        _discard_stdout()
        return 128 + signal.SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
