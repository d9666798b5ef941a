"""natsflow spec."""
