"""Planning, torch-free: field values, the variant registry, cells, suites, plug-in specs."""
