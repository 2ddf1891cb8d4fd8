"""Run by tests/test_distributed.py under torchrun: one data-parallel training per family, in one launch.

Each rank calls the library's own entry point (run_train), as `torchrun -m workbench train` would, so the
test pays torchrun's start-up once for every family. Usage: torchrun ... torchrun_families.py STORE ARGS_JSON
where ARGS_JSON maps each dictionary name to its TrainConfig overrides.
"""

import json
import sys

from workbench.train import TrainConfig, run_train

store, runs = sys.argv[1], json.loads(sys.argv[2])
for name, overrides in runs.items():
    run_train(TrainConfig(store=store, name=name, **overrides), progress=False)
