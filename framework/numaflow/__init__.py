"""Numaflow SDK programs run unmodified: natsflow as their data plane (docs/numaflow-udfs.md)."""
