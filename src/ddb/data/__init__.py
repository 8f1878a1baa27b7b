"""Datasets: the Waterbirds-format reader shared by all, and the embedded benchmark."""
