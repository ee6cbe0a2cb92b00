"""Stages: each one job, each a callable on an Arrow batch (see ``base``)."""
