"""Offline inference: face detection, alignment and expression prediction."""
