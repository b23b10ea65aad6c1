"""Operating the processes: the metrics/health server and fault points for crash tests."""
