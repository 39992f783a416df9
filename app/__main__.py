"""`python -m app` is the `leadscore` command."""

import sys

from app.cli import main

sys.exit(main())
