"""Clio's privacy layers at publish time, and user deletion.

- Layer 1 lives in the facet prompts (no identifying details).
- Layer 2: clusters with too few conversations or distinct users are withheld (``audit.annotate``).
- Layer 3: names and summaries are written without private details (prompts).
- Layer 4: an optional LLM auditor rates each cluster 1-5; low scores are withheld (``audit.audit``).

``visibility`` is the one rule of what may be shown (the site writer, the API, trends and deletion
call it); ``users`` the keyed user identity; ``scrub``, ``requests``, ``deletion`` and ``denylist``
remove a deleted user's data and keep it out.
"""
