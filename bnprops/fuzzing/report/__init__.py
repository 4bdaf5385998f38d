"""A fuzz campaign's report, one module per job: its data (model), workers' and shards' results added up (merge),
report.json and the plot's data (codec), summary.md and report.md (summary, markdown), the pictures (plots), and the
output folder written and read back (folder)."""
