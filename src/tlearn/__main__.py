"""`python -m tlearn ...` (what `torchrun -m tlearn train ...` runs)."""
import sys

from .cli import main

sys.exit(main())
