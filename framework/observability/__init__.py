"""natsflow observability."""
