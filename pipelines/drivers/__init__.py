"""Poll loops: a source through the Ray executor, using only the source's own methods."""
