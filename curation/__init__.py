"""curation: turn an organisation's own data into fine-tuning datasets."""

__version__ = "0.1.0"
