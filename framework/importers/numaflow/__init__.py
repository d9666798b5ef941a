"""`natsflow import numaflow`: a Numaflow Pipeline resource as a natsflow pipeline file.

report.py: what did not convert and the reader that notices it; pipeline.py: the resource and
its spec; vertices.py, sources.py, sinks.py, udf.py, kafka.py: the vertices; settings.py: limits,
scale, watermark, lifecycle, side inputs and edges; programs.py: user-defined containers as
`numaflow:` programs; values.py: durations, secrets and env; output.py: the YAML text.
"""

from framework.importers.numaflow.output import pipeline_yaml
from framework.importers.numaflow.pipeline import Conversion, convert
from framework.importers.numaflow.report import Finding, Report

__all__ = ["Conversion", "Finding", "Report", "convert", "pipeline_yaml"]
