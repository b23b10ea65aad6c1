"""Online clustering between batch runs: assign each new facet vector as it arrives.

``kmeans`` is the model the consumers share (assign, apply deltas, warm start, state);
``deltas`` the per-record updates workers exchange through Kafka; ``update_rules`` and
``outliers`` its maths; ``river_compat`` converts to and from ``river.cluster.KMeans``;
``drift`` watches assignment distances for a topic the clusters do not cover.
"""
