from edge_smsp.cli import entry_point

entry_point()
