"""The seed's (OpenClio's) configuration names, and how its values translate to clio-stream's settings.

Every field of OpenClio's ``OpenClioConfig`` has a snake_case setting here with the seed's meaning;
``SEED_ALIASES`` maps the seed's camelCase name to it. ``ClioSettings`` accepts the seed names as
keyword arguments, attributes and TOML keys through ``translate``. Two seed values need more than a new
name: ``kmeansArgs`` (the seed runs FAISS k-means, we run scikit-learn's) and the seed's ``None`` for
"use the default function", both handled here.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

log = logging.getLogger(__name__)

SEED_ALIASES: dict[str, str] = {
    "seed": "seed",
    "verbose": "show_progress",
    "llmBatchSize": "llm_batch_size",
    "embedBatchSize": "embed_batch_size",
    "dedupData": "dedup",
    "dedupKeyFunc": "dedup_key",
    "getConversationFunc": "conversation_getter",
    "maxConversationTokens": "max_conversation_tokens",
    "tokenizerArgs": "tokenizer_args",
    "nBaseClustersFunc": "n_base_clusters",
    "maxPointsToSampleInsideCluster": "max_points_to_sample_inside_cluster",
    "maxPointsToSampleOutsideCluster": "max_points_to_sample_outside_cluster",
    "nNameDescriptionSamplesPerCluster": "n_name_description_samples_per_cluster",
    "kmeansArgs": "kmeans_args",
    "minTopLevelSize": "min_top_level_size",
    "nAverageClustersPerNeighborhood": "n_neighbourhoods",
    "nSamplesOutsideNeighborhood": "n_samples_outside_neighbourhood",
    "nDesiredHigherLevelNamesPerClusterFunc": "n_names_per_neighbourhood",
    "nCategorizeSamples": "n_categorize_samples",
    "maxChildrenForRenaming": "max_children_for_renaming",
    "nRenameSamples": "n_rename_samples",
    "llmExtraInferenceArgs": "llm_sampling_args",
    "htmlMaxSizePerFile": "site_chunk_bytes",
    "htmlConversationFilterFunc": "site_conversation_filter",
    "htmlDataToJsonFunc": "conversation_to_json",
    "htmlRoot": "html_root",
    "webuiPort": "web_port",
}

# Seed settings whose ``None`` means "the default function": dropped, so the default applies.
NONE_MEANS_DEFAULT = frozenset({"dedup_key", "conversation_getter", "conversation_to_json"})

# scikit-learn KMeans arguments clio-stream passes on, and the seed's FAISS-only ones (no equivalent: the seed's
# ``approximate`` HNSW assignment, its graph parameters, thread count and printing change speed or output only).
SKLEARN_KMEANS_ARGS = frozenset({"n_init", "max_iter", "tol", "init", "algorithm", "copy_x"})
FAISS_ONLY_KMEANS_ARGS = frozenset({"approximate", "M", "ef", "n_jobs", "verbose"})


def translate(data: Mapping[str, Any], fields: Mapping[str, Any], *, settings_name_wins: bool = False
              ) -> dict[str, Any]:
    """``data`` with seed names renamed to settings names.

    A setting named both ways in one call (keyword arguments) is an error; with ``settings_name_wins`` (the
    sources merged: keywords and environment already under settings names, a seed name can only come from the
    TOML file, the lowest source) the settings name wins.
    """
    out: dict[str, Any] = {}
    for key in sorted(data, key=lambda k: k not in fields):  # settings names first
        value = data[key]
        name = SEED_ALIASES.get(key, key) if key not in fields else key
        if name in out:
            if settings_name_wins:
                continue
            raise TypeError(f"{key!r} and {name!r} name the same setting; give one")
        if value is None and name in NONE_MEANS_DEFAULT:
            continue
        out[name] = value
    return out


def kmeans_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's ``kmeansArgs`` as scikit-learn ``KMeans`` arguments.

    FAISS-only arguments are dropped with a log line (progress is ``show_progress``'s, the seed's ``verbose``).
    Anything else scikit-learn would not take is refused here with the list of what it takes, rather than failing
    deep in a run. ``n_clusters`` and ``random_state`` come from ``n_base_clusters`` and ``seed``.
    """
    out: dict[str, Any] = {}
    dropped = sorted(k for k in args if k in FAISS_ONLY_KMEANS_ARGS)
    if dropped:
        log.info("kmeans_args: %s are FAISS-only (the seed's k-means) and have no scikit-learn equivalent; ignored",
                 ", ".join(dropped))
    unknown = sorted(k for k in args if k not in FAISS_ONLY_KMEANS_ARGS and k not in SKLEARN_KMEANS_ARGS)
    if unknown:
        raise ValueError(f"kmeans_args {unknown} are not scikit-learn KMeans arguments: use "
                         f"{sorted(SKLEARN_KMEANS_ARGS)} (the seed's FAISS-only {sorted(FAISS_ONLY_KMEANS_ARGS)} "
                         "are accepted and ignored; n_clusters and random_state come from n_base_clusters and seed)")
    for key, value in args.items():
        if key in SKLEARN_KMEANS_ARGS:
            out[key] = value
    return out
