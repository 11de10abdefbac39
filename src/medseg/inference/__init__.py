"""Checkpoint + image -> probabilities -> masks in the input's own format."""
