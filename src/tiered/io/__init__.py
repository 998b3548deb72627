"""Sources and sinks: replay logs, input streams (JSONL, CSV, Parquet, stdin), outputs."""
