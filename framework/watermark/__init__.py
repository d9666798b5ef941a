"""natsflow watermark."""
