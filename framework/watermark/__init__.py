"""Watermarks: marks (the protocol's names and constants), publisher (writers), fetcher
(readers), proxy (for program vertices)."""
