"""Conversion tables of the built-in networks, one module each (`TABLE = Table(...)`)."""
