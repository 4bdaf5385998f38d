"""A fuzz campaign's report: one module per job (model, files, markdown, plots)."""
