"""Utilities every layer may use: atomic file writes, parsing the user's choice of entry points, backends, dtypes."""
