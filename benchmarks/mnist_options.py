"""Which options move 2-arm ACC on the bundled MNIST digits (issue 6 aims at 85 %): one seed, short runs.

    python benchmarks/mnist_options.py --steps 2000 [--configs S10 S2 ...] [--threads 2]

Each configuration trains ``CplMixVAE(mnist5k, n_types=10, n_arms=2, seed=0, ...)`` with its options (affine
copies, what ``--augment auto`` picked for images when these figures were measured) and prints one JSON line:
ACC and ARI against ``obs['digit']`` (mean over arms) and the seconds it took. A search, not a table: one seed each, so differences under ~5 points are noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

#: name -> CplMixVAE options. "sigma" rows divide every term but the reconstruction by 1/sigma^2, which is what a
#: Gaussian likelihood with that pixel standard deviation (instead of 1) would do on data in [0, 1].
CONFIGS = {
    "S10": {"state_dim": 10},
    "S2": {"state_dim": 2},
    "S10_wide": {"state_dim": 10, "hidden_dim": 500, "n_hidden_layers": 2},
    "S10_st": {"state_dim": 10, "straight_through": True},
    "S2_wide_st": {"state_dim": 2, "hidden_dim": 500, "n_hidden_layers": 2, "straight_through": True},
    "lam0.1": {"state_dim": 10, "lam": 0.1},
    "lam0.01": {"state_dim": 10, "lam": 0.01},
    "sigma0.1": {"state_dim": 10, "lam": 0.01, "beta": 0.01, "entropy_weight": 0.01},
    "sigma0.1_S2": {"state_dim": 2, "lam": 0.01, "beta": 0.01, "entropy_weight": 0.01},
    "sigma0.3": {"state_dim": 10, "lam": 0.1, "beta": 0.1, "entropy_weight": 0.1},
    "1arm_sigma0.1": {"state_dim": 10, "n_arms": 1, "beta": 0.01},
    "wide_st_S10": {"state_dim": 10, "hidden_dim": 500, "n_hidden_layers": 2, "straight_through": True},
    "wide_st_S2_sigma0.1": {"state_dim": 2, "hidden_dim": 500, "n_hidden_layers": 2, "straight_through": True,
                            "lam": 0.01, "beta": 0.01, "entropy_weight": 0.01},
    "1arm_wide_st_S2": {"state_dim": 2, "hidden_dim": 500, "n_hidden_layers": 2, "straight_through": True, "n_arms": 1},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from cplmix_explorer import CplMixVAE, datasets

    torch.set_num_threads(args.threads)
    adata = datasets.load("mnist5k")
    for name in args.configs:
        started = time.perf_counter()
        model = CplMixVAE(adata, n_types=10, labels="digit", seed=args.seed, steps=args.steps,
                          **{"n_arms": 2, "augment": "affine", **CONFIGS[name]})
        model.train(progress=False)
        evaluation = model.evaluate("digit")
        print(json.dumps({"config": name, "acc": round(evaluation["acc"], 3), "ari": round(evaluation["ari"], 3),
                          "seconds": round(time.perf_counter() - started), "steps": args.steps, "seed": args.seed}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
