"""Trace one training run at every evaluation: per-arm and consensus ARI, categories used per arm, the arms' agreement,
the median confidence and the held-out objective (the study behind the 2026-12-05 defaults; see docs/quality.md).

    python benchmarks/k40_trace.py --data sim40 --steps 2000 --eval 500 --set type_prior_weight=0

--data: sim10/sim40/sim120 (types of 900 down to 30 cells, geometric), zc / zs (Zeisel classes / subclasses,
1,000 genes), bl (bladder), mn (digits), or suite:NAME, a dataset of benchmarks/quality_suite.py exactly as the
suite makes it (e.g. suite:sim120). Prints one JSON line per evaluation: the ARIs, categories used per arm, start
categories merged (as the suite counts them), agreement, median confidence, the last logged coupling and type
entropy per arm (nats), and the held-out objective.
"""
import sys, json, time, argparse
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from cplmix_explorer import CplMixVAE, datasets
from cplmix_explorer.model.inference import infer
from cplmix_explorer.analysis.metrics import compare_to_labels
from cplmix_explorer.train.events import Evaluation

p = argparse.ArgumentParser()
p.add_argument("--data", default="sim40")
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--eval", type=int, default=500)
p.add_argument("--set", action="append", default=[])
a = p.parse_args()
torch.set_num_threads(1)
def sizes(k, lo=30, hi=900, seed=0):
    r = np.geomspace(hi, lo, k)
    return [int(round(x)) for x in r]
if a.data.startswith("suite:"):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from quality_suite import DATASETS, merged_start_categories
    d = DATASETS[a.data.split(":", 1)[1]]
    ad = d.load(False); labels = d.labels; k = d.n_types(False); opts = {}
elif a.data.startswith("sim"):
    k = int(a.data[3:].split("_")[0])
    ad = datasets.simulate(n_genes=2000, n_types=k, n_classes=4, state_dim=2, type_sizes=sizes(k), seed=100 + k)
    labels = "true_type"; opts = {}
elif a.data == "zc":
    ad = datasets.load("zeisel2015"); labels = "class"; k = 7; opts = {"n_genes": 1000}
elif a.data == "zs":
    ad = datasets.load("zeisel2015"); labels = "subclass"; k = ad.obs["subclass"].nunique(); opts = {"n_genes": 1000}
elif a.data == "bl":
    import anndata; ad = anndata.read_h5ad("../shared/data/han2018_mouse_bladder_2100.h5ad"); labels = "cell_type"; k = 16; opts = {}
elif a.data == "mn":
    ad = datasets.load("mnist5k"); labels = "digit"; k = 10; opts = {"state_dim": 10}
for s in a.set:
    n, v = s.split("="); 
    try: v = json.loads(v)
    except Exception: pass
    opts[n] = v
print(a.data, ad.shape, "K", k, opts, flush=True)
m = CplMixVAE(ad, n_types=k, labels=labels, seed=a.seed, steps=a.steps, eval_every=a.eval, **opts)
y = np.asarray(ad.obs[labels]).astype(str)
tr = m.make_trainer()
def merged(inf):
    """Start categories (first arm's start) that training merged, as the suite counts them (None before the start exists)."""
    if tr.type_targets is None or not a.data.startswith("suite:"):
        return None
    start = tr.type_targets[0].cpu().numpy()  # (cells,), -1 outside the partition
    return merged_start_categories(start, np.asarray(inf.consensus_type))
def fit_start(inf):
    """Per arm: the fraction of cells of its start partition whose argmax is their start category."""
    if tr.type_targets is None:
        return None
    targets = tr.type_targets.cpu().numpy()
    return [round(float((np.asarray(inf.type_per_arm[i]) == t)[t >= 0].mean()), 3) for i, t in enumerate(targets)]
t0 = time.time()
from cplmix_explorer.train.events import StepMetrics
last = {}
def on(ev):
    if isinstance(ev, StepMetrics):
        last.update({n: float(ev.values[-1, i]) for i, n in enumerate(ev.names)})
    if isinstance(ev, Evaluation):
        inf = infer(tr.module, tr.data)
        aris = [compare_to_labels(inf.type_per_arm[i], y)["ari"] for i in range(inf.type_per_arm.shape[0])]
        c = compare_to_labels(inf.consensus_type, y)
        used = [len(np.unique(inf.type_per_arm[i])) for i in range(inf.type_per_arm.shape[0])]
        print(json.dumps({"step": ev.step, "t": round(time.time() - t0), "ari_arms": [round(x, 3) for x in aris],
              "ari": round(c["ari"], 3), "acc": round(c["acc"], 3), "used": used, "agree": round(ev.mean_agreement or 0, 3),
              "conf_med": round(float(np.median(inf.consensus_confidence)), 3), "val": round(ev.validation_loss or 0, 1),
              "coupling": round(last.get("coupling", float("nan")), 2),
              "entropy": [round(v, 2) for n, v in last.items() if n.startswith("entropy_arm")],
              "merged": merged(inf), "fit_start": fit_start(inf), "warm_up_end": tr.type_init_end,
              "warm_up_open": tr.type_init_open, "warm_up_fit": tr.start_fit_measured}), flush=True)
m.events.subscribe(on)
res = tr.fit(a.steps)
