"""Cached image embeddings, text classifiers per prompt set, zero-shot evaluation."""
