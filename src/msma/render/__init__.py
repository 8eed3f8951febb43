"""msma.render."""
