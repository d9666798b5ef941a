"""`natsflow ui FILE`: a live web page of a running pipeline (plain HTML/JS/SVG, no build step)."""
