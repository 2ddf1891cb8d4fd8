"""`python -m workbench ...`, which is how torchrun starts it: `torchrun --nproc-per-node 2 -m workbench train ...`."""

import sys

from workbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
