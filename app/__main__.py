"""`python -m app` is the `leadscore` command."""

import sys

from app.cli.main import main

sys.exit(main())
