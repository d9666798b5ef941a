"""natsflow's own connectors: one folder per external system, each with its config model, its
source and/or sink, and (for sources scaled on their upstream backlog) its KEDA trigger. They are
registered in pyproject.toml's `natsflow.sources` / `natsflow.sinks` entry points, the way a
third-party package registers its own (docs/connectors.md)."""

# The spec's models are built from the registry, which imports each folder's __init__: importing
# natsflow first means a connector module imported on its own never runs half-initialized.
import framework.spec  # noqa: F401
