"""Everything clio-stream keeps in Qdrant and on disk: points, state documents, locks, published versions, checkpoints."""
