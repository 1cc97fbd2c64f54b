"""Finding files, following them and reading them in chunks of whole lines."""
