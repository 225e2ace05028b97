"""Ray composition of the core: the ingestion actor graph, the service, training jobs.

Modules here import Ray; the core (`curator/`) never does.
"""
