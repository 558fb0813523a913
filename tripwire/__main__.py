"""`python -m tripwire ...` is the `tripwire` console script (the static checker's CLI)."""

import sys

from tripwire.invariants.cli import main

sys.exit(main())
