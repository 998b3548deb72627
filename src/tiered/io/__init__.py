"""Sources and sinks: input streams (JSONL, CSV, Parquet, stdin), outputs."""
