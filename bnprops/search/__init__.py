"""Hypothesis strategies: cases, groups, training sequences. Imports only the layers below."""
