"""Pure domain types: conversations, facets, clusters. No I/O."""
