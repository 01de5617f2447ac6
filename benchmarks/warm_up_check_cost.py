"""What the warm-up's fit check (Trainer.start_fit, every TYPE_INIT_CHECK_STEPS steps until the type heads have
learnt the start) costs against the warm-up's own steps, on a suite dataset, one torch thread, CPU seconds.

    python benchmarks/warm_up_check_cost.py --data sim120
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quality_suite import DATASETS  # noqa: E402

from cplmix_explorer import CplMixVAE  # noqa: E402
from cplmix_explorer.config import TYPE_INIT_CHECK_STEPS  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="sim120")
args = parser.parse_args()
torch.set_num_threads(1)
dataset = DATASETS[args.data]
model = CplMixVAE(dataset.load(False), n_types=dataset.n_types(False), seed=0)
trainer = model.make_trainer()
trainer.prepare_type_init()
started = time.process_time()
for _ in range(5):
    trainer.start_fit()
check = (time.process_time() - started) / 5
trainer.fit(20)
started = time.process_time()
trainer.fit(120)  # warm-up steps (type_init_steps is 300)
step = (time.process_time() - started) / 100
print(f"{args.data}: {len(trainer._type_init_check_rows)} cells checked; one check {check * 1000:.0f} ms CPU; one warm-up "
      f"step {step * 1000:.0f} ms CPU; the check adds {check / (TYPE_INIT_CHECK_STEPS * step) * 100:.1f} % to the warm-up")
