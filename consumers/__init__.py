"""The streaming side: Kafka consumers that turn conversations into stored, clustered facets.

- ``processing``: the core, ``process_batch`` over already-polled records (no Kafka I/O);
- ``decoding``: records -> validated conversations or dead letters;
- ``centroids``: the shared online k-means state (versions from Qdrant, deltas from Kafka);
- ``worker``: ``ConsumerWorker``, the poll / process / write / commit loop;
- ``metrics``: the worker's in-process counters;
- ``producing``: files -> messages on the topic (``clio-stream produce``);
- ``bootstrap``: the first clustering of what is stored (``clio-stream bootstrap-clusters``).

Imports stay lazy: importing the package must not pull in Kafka, torch or vLLM.
"""
