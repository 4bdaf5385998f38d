"""The fuzz job and its reports: the campaign loop, the catalogue of signatures and causes, reproducers, the
per-family findings (relations, networks, sequences), the report, summary, plots and history.
Imports only the layers below.
"""
