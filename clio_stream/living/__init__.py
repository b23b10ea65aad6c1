"""Living clusters: the re-cluster job, stable ids and lineage, the clustering write path, the scheduler."""
