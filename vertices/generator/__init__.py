"""`generator`: synthetic data for demos, load and tests."""

from framework.spec.registry import ConnectorInfo
from vertices.generator.config import GeneratorConfig

SOURCE = ConnectorInfo(GeneratorConfig, "vertices.generator.source:GeneratorSource", live=True, rank=1)
