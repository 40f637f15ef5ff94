"""Scheduled retraining: challenger, champion, promotion gate and model history."""
