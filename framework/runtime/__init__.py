"""natsflow runtime."""
