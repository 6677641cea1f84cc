"""`python -m contend` runs the `contend` command."""

import sys

from contend.cli import main

sys.exit(main())
