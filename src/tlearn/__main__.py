"""`python -m tlearn ...` (what `torchrun -m tlearn train ...` runs)."""
import sys

from .cli.commands import main

sys.exit(main())
