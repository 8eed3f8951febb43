"""msma.data."""
