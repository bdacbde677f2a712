"""The `crew` command line. Modules here import heavy libraries inside functions only."""
