"""``torchrun --nproc_per_node N -m cplmix_explorer.train DATA --out RUN_DIR [options of cplmix train]``.

Every process trains on its shard of each global batch (``--batch-size`` is the global batch); rank 0
checks the run folder first, writes checkpoints and outputs, and prints the summary. Without torchrun this
is the same as ``cplmix train``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ..cli import add_train_arguments, config_from_args, main as cli_main, one_line_warning
from ..errors import CplmixError
from ..train.distributed import init_from_environment, launched_by_torchrun, shutdown
from ..workflows.run import check_run_dir_free, train_run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not launched_by_torchrun():
        return cli_main(["train", *argv])
    parser = argparse.ArgumentParser(prog="torchrun ... -m cplmix_explorer.train")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    warnings.formatwarning = one_line_warning
    context = None
    try:
        config = config_from_args(args)
        context = init_from_environment(config.device)
        problem = None
        if context.is_main and not args.resume:
            try:
                check_run_dir_free(Path(args.out))
            except CplmixError as error:
                problem = str(error)
        problem = context.broadcast_object(problem)
        if problem is not None:
            raise CplmixError(problem)
        outcome = train_run(args.data, args.out, config, resume=args.resume, progress=not args.quiet and context.is_main,
                            command=sys.argv, distributed=context)
        if context.is_main and not args.quiet:
            summary = {k: v for k, v in outcome.metrics.items() if k not in ("history", "evaluations", "per_arm")}
            print(json.dumps({"run_dir": str(outcome.run_dir), "processes": context.world_size, **summary}, indent=2,
                             default=str))
        return 0
    except CplmixError as error:
        if context is None or context.is_main:
            print(f"cplmix: error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
