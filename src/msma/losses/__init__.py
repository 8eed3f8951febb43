"""msma.losses."""
