"""The Kedro-free library: data sources, images, splits (and later models, training).

Everything here takes and returns plain Python, pandas and torch objects, so it can be
used from a notebook or another orchestrator as well as from the Kedro nodes.
"""
