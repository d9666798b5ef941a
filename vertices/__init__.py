"""Built-in connectors: one module per source under `sources/`, one per sink under `sinks/`."""
