"""natsflow console."""
