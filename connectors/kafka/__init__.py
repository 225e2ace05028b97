"""Kafka: the source (`source`), stream order (`ordering`, `stream`), wire formats (`codec`), client
settings (`clients`), the dead-letter sink and `curator produce`. Importing this package imports no
kafka-python; `source` and `stream` do."""
