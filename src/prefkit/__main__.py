"""``python -m prefkit`` runs the command line."""

import sys

from prefkit.cli import main

sys.exit(main())
