"""FLUX.2 model construction: tiny offline pipelines for tests and notebooks (``tiny``)."""
