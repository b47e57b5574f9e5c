"""Shared test helpers: the reference quantizer, small models, numeric checks."""
