"""rrgen: deploy compressed recursive reasoners (TRM) to microcontrollers.

Pipeline: model -> quantize -> trace -> plan -> emit -> build -> run.
"""

import os

__version__ = "0.1.0"

# One OpenBLAS thread for numpy (the INT4 weight-scale search), unless the user sets it.
# OpenBLAS threads spin while they wait, so on a machine whose cores are busy with other
# jobs two threads took twice as long as one (docs/benchmarks.md). This takes effect
# only when rrgen is imported before numpy, as the command line does.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
