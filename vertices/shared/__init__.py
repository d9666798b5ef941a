"""What several connectors share (a connector never imports another connector's folder)."""
