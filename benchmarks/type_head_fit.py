"""How fast the type head can learn a partition, alone: the engine's type encoder and head (CoupledMixtureVAE.encode)
trained with the cross-entropy toward a suite dataset's true labels only, no decoder, no coupling; prints the
accuracy on 5,000 cells every 250 steps. It separates the network's learning speed from the objective's pull
(the question behind type_init_fit: on sim120 the 300-step warm-up ended with half the start learnt).

    python benchmarks/type_head_fit.py --data sim120 --steps 1500 --bn 10
"""
import sys, json, time, argparse
import numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quality_suite import DATASETS
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.api import prepare_for_model
from cplmix_explorer.model.network import CoupledMixtureVAE
p = argparse.ArgumentParser()
p.add_argument("--data", default="sim120"); p.add_argument("--steps", type=int, default=1500)
p.add_argument("--bn", type=int, default=10); p.add_argument("--drop", type=float, default=0.2)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--tau", type=float, default=0.1)
p.add_argument("--batch", type=int, default=256); p.add_argument("--hidden", type=int, default=100)
a = p.parse_args()
torch.set_num_threads(1); torch.manual_seed(0)
d = DATASETS[a.data]; ad = d.load(False); k = d.n_types(False)
cfg = CplMixConfig().update(n_types=k)
prep = prepare_for_model(ad, cfg)
X = torch.as_tensor(prep.model_input()); 
y_raw = np.asarray(ad.obs[d.labels]).astype(str); _, y = np.unique(y_raw, return_inverse=True); y = torch.as_tensor(y)
net = CoupledMixtureVAE(X.shape[1], k, n_arms=1, bottleneck_dim=a.bn, input_dropout=a.drop, tau=a.tau, hidden_dim=a.hidden)
opt = torch.optim.Adam(net.parameters(), lr=a.lr)
g = torch.Generator().manual_seed(0); ev = torch.randperm(len(y), generator=g)[:5000]
t0 = time.time()
for step in range(1, a.steps + 1):
    idx = torch.randint(0, len(y), (a.batch,), generator=g)
    net.train(); _, logits = net.encode(X[idx][None])
    loss = torch.nn.functional.cross_entropy((logits / a.tau)[0], y[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 250 == 0:
        net.eval()
        with torch.no_grad():
            _, lg = net.encode(X[ev][None]); acc = float((lg[0].argmax(-1) == y[ev]).float().mean())
        print(json.dumps({"step": step, "acc": round(acc, 3), "loss": round(float(loss.detach()), 3), "t": round(time.time() - t0)}), flush=True)
