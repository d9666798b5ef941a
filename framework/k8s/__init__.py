"""natsflow k8s."""
