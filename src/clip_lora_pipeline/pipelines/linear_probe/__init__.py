"""Linear probe on the cached image embeddings."""
