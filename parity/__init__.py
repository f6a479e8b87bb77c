"""Parity suite: the only package importing both backends (conversion, inputs, comparison, report)."""
