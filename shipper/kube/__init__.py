"""Pod metadata for records: the file name's fields (file_names), the node's pod cache
(pod_metadata) fed by one list+watch (watch), merged per followed file (enrich)."""
