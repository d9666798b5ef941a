"""natsflow-filetail: a source that tails a file, one message per line."""

# natsflow builds its spec models from the connector registry, which imports this package's entry
# point (natsflow_filetail.connector): importing natsflow first means that module is never met
# half-initialized when this package is the first thing imported.
import framework.spec  # noqa: F401
