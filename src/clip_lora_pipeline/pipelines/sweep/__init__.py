"""Shots x seeds sweeps and their aggregate report."""
