"""Reports read from BigQuery: reconcile, explain, statement."""
