"""Views people read, over a published version: filters and breakdowns (slices under the privacy minimums),
the cluster map, "where would this go" search, alerts, export and the difference between two versions.

Each module computes from the published result (and, for the map and search, cluster centroids); what may be
shown is always ``clio_stream.privacy.visibility``'s rule.
"""
