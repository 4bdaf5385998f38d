"""The fuzz job and its reports, one module per job: the campaign and its plan, workers, searches and the
explorer, the side families and their findings, the catalogue, causes and history, reproducers, and the report
package. Imports only the layers below.
"""
