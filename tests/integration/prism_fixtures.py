"""Prism runner fixtures (filled in with the Prism smoke tests)."""
