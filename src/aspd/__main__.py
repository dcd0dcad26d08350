"""`python -m aspd` runs the CLI."""

import sys

from aspd.cli import main

sys.exit(main())
