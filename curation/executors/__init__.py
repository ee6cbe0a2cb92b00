"""Executors beyond the embedded one: each runs the same stages with the same accounting."""
