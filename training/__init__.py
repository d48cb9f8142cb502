"""Training the embedded model (train_embedded.py) and the data and quality checks only it and its tests use."""
