"""Model factories and loaders."""
