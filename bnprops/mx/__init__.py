"""MXNet itself: the runners of the five entry points, the backend workers, stacked calls, the version and the
release environments, training sessions, producer chains (networks) and the reproducer templates.
Imports only bnprops.base and bnprops.model.
"""
