"""msma.face_model."""
