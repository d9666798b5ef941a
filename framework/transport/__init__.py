"""natsflow transport."""
