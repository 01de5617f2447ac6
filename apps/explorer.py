"""The cplmix explorer app::

    panel serve apps/explorer.py                       # http://localhost:5006/explorer
    panel serve apps/explorer.py --args --data-dir /data/h5ad --runs-dir /data/runs

Opens with the bundled Zeisel 2015 cortex data and the shipped demo model (``models/zeisel2015_demo``), so
every view is populated before any training. Options (after ``--args``, or as environment variables):
``--demo`` / CPLMIX_DEMO (a run folder, '' for none), ``--data-dir`` / CPLMIX_DATA_DIR (the only folder
whose .h5ad files may be opened by path; default: the working directory), ``--runs-dir`` / CPLMIX_RUNS_DIR
(where trainings started here write their run folders; default ./runs), ``--max-upload-mb`` /
CPLMIX_MAX_UPLOAD_MB (default 200), ``--allow-remote`` / CPLMIX_ALLOW_REMOTE=1 (serve other machines
without authentication; otherwise only this machine or authenticated users get the app).
See the README, "Serving the explorer".
"""

import sys
from pathlib import Path

import panel as pn

from cplmix_explorer.views.explorer import app_page, app_settings

# no "filedropper" here: its scripts animate every open tab; the upload view loads them when first chosen
pn.extension(sizing_mode="stretch_width", throttled=True)
if pn.config.nthreads is None:  # sessions' callbacks in a thread pool: one busy session does not stall the others
    pn.config.nthreads = 4

DEFAULT_DEMO = Path(__file__).resolve().parent.parent / "models" / "zeisel2015_demo"
app_page(app_settings(sys.argv[1:], default_demo=DEFAULT_DEMO)).servable(title="cplmix explorer")
