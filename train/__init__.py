"""Hand a curated dataset version to SageMaker training (see issue: train launch)."""
