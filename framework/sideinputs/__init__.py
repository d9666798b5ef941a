"""natsflow sideinputs."""
