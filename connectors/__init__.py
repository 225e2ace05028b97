"""Sources and sinks: files (Parquet, JSONL, image folders, WebDataset tars) and Kafka.

Kafka modules import kafka-python; nothing here is imported by the core unless asked for.
"""
