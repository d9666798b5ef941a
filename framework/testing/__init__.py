"""natsflow testing."""
