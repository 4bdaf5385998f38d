"""Verdicts: the comparator, invariants, known deviations and their models, the judgement of one call, the
checks the properties assert, metamorphic relations, the training-state model, BatchNorm judged in a network
and through a model's life, the release probe. Imports only the layers below (base, model, mx).
"""
