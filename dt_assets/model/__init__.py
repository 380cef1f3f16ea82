"""The 3DGAN: architecture, preprocessing, streaming data, training, generation and the model registry."""
