"""Pod metadata for records. This issue: what the log file's name tells."""
