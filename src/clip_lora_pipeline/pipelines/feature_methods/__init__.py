"""Methods on cached features (linear probe, text-initialised head, Tip-Adapter, ...)."""
