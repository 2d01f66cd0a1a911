"""I/O around the pure core: Avro codec, Kafka admin/source/sink, Parquet writer, DuckDB catalog."""
