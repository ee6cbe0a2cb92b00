"""Data contracts shared by connectors, curation stages, the writer and train/."""
