"""How much does a trained model's objective care which type a cell gets? Trains on the simulator (`synthetic`,
K = the true number of types, 2 arms) and, on 256 cells shown to both arms unchanged (eval mode), prints:

- the reconstruction (nats per cell) when the decoder is handed each cell's argmax type, a random type, or the
  uniform mixture, each with the state the state head infers for that type, and with the argmax type's state;
- the state KL (nats per cell) for the same three choices;
- the coupling distance and type entropy if every arm's logits were multiplied by alpha (sharper q(c|x)).

    python benchmarks/type_signal.py                                 # config defaults, 3000 steps, seed 0
    python benchmarks/type_signal.py --set marginal_entropy_weight=1

Prints the tables and one JSON line; writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import single_run_parser  # noqa: E402

ALPHAS = (0.5, 1, 2, 4, 8, 16)


def main(argv=None) -> int:
    parser = single_run_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import cplmix_explorer as cx
    from cplmix_explorer import datasets
    from cplmix_explorer.model.losses import categorical_entropy, coupling_distance, gaussian_reconstruction, state_kl

    adata = datasets.load("synthetic")
    info = adata.uns["simulation"]
    model = cx.CplMixVAE(adata, n_types=info["n_types"], n_arms=2, state_dim=info["state_dim"], seed=args.seed,
                         labels="true_type", **dict(args.set))
    model.train(steps=args.steps, progress=False)
    network = model.module.eval()
    rows = torch.randperm(adata.n_obs, generator=torch.Generator().manual_seed(0))[:256]
    x = model.device_data().model_input(rows.to(model.device)).unsqueeze(0).expand(network.n_arms, -1, -1)
    report = {"seed": args.seed, "steps": args.steps, "options": dict(args.set), "acc": model.evaluate()["acc"]}
    with torch.no_grad():
        h, logits = network.encode(x)
        log_q = network.type_posterior(logits)
        n_types = log_q.shape[-1]
        argmax = F.one_hot(log_q.argmax(-1), n_types).to(x.dtype)
        choices = {
            "argmax type": argmax,
            "random type": F.one_hot(torch.randint(0, n_types, log_q.shape[:-1], generator=torch.Generator().manual_seed(1)),
                                     n_types).to(x.dtype).to(x.device),
            "uniform mixture": torch.full_like(log_q, 1.0 / n_types),
        }
        argmax_state, _ = network.state_posterior(h, argmax)
        print(f"{'type handed to the decoder':28} {'rec, its own state':>20} {'rec, argmax state':>18} {'state KL':>9}")
        for name, c in choices.items():
            mu, logvar = network.state_posterior(h, c)
            own = gaussian_reconstruction(x, network.decode(c, mu)).mean().item()
            fixed = gaussian_reconstruction(x, network.decode(c, argmax_state)).mean().item()
            kl = state_kl(mu, logvar).mean().item()
            print(f"{name:28} {own:20.2f} {fixed:18.2f} {kl:9.2f}")
            report[name] = {"rec_own_state": own, "rec_argmax_state": fixed, "state_kl": kl}
        print(f"\n{'alpha':>6} {'mean max q':>11} {'coupling d2':>14} {'type entropy':>13}")
        report["sharpened"] = []
        for alpha in ALPHAS:
            sharp = network.type_posterior(logits * alpha)
            q = sharp.exp()
            row = {"alpha": alpha, "mean_max_q": q.max(-1).values.mean().item(),
                   "coupling": coupling_distance(q).item(), "entropy": categorical_entropy(q, sharp).mean().item()}
            print(f"{alpha:6} {row['mean_max_q']:11.3f} {row['coupling']:14.1f} {row['entropy']:13.3f}")
            report["sharpened"].append(row)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
