"""Recipes shipped with the package (YAML configs read by `longrl demo`)."""
