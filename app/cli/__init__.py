"""The `leadscore` command: the composition root that wires settings, storage, models, the API, consumers and
the dev tools into processes."""
