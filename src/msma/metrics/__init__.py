"""msma.metrics."""
