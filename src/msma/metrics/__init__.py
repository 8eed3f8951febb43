"""Evaluation metrics: AFLW2000-3D landmark NME, mesh error against 3D scans (MICC / NoW), synthetic ground truth."""
