"""msma.models."""
