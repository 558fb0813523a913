import sys

from tripwire.invariants.cli import main

sys.exit(main())
