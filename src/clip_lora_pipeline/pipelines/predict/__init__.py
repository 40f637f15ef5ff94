"""Predictions for new images with a chosen model: zero-shot, linear probe or an adapter."""
