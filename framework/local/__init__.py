"""natsflow local."""
