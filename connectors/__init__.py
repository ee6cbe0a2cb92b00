"""Sources: each turns some store of customer data into Arrow batches of rows with ``id`` and ``source``."""
