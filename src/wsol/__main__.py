"""`python -m wsol`: the command line."""

import sys

from wsol.cli import main

sys.exit(main())
