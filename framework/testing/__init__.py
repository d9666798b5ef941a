"""natsflow testing: run a pipeline file in memory (`run_pipeline`), and the conformance kit
(`framework.testing.conformance`, imported on its own: it starts processes and a nats-server)."""

from framework.testing.harness import (
                                       DeadLetter,
                                       HarnessError,
                                       PipelineOutput,
                                       Watermark,
                                       arun_pipeline,
                                       run_pipeline,
)

__all__ = ["DeadLetter", "HarnessError", "PipelineOutput", "Watermark", "arun_pipeline", "run_pipeline"]
