"""Privacy settings: the minimums a shown cluster meets, the user-id hash key, name audits, user deletion.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from clio_stream.secret_settings import DEFAULT_USER_ID_HASH_KEY


class PrivacyFields(BaseModel):
    # --- privacy ---
    min_cluster_conversations: int = Field(3, ge=1, description="Clusters with fewer conversations are never shown.")
    min_cluster_users: int = Field(2, ge=1, description="Clusters with fewer distinct users are never shown.")
    user_id_hash_key: str = Field(
        DEFAULT_USER_ID_HASH_KEY, description="Key for the keyed hash of user ids. The streaming services refuse "
        "to start with this placeholder; `clio-stream up` generates one for its demo.")
    audit_cluster_names: bool = Field(False, description="Ask the LLM to rate each cluster's privacy (1-5).")
    check_cluster_names: bool = Field(
        True, description="Check each cluster's name, at every level, against its members (name fidelity); show "
        "keyword labels beside names and instead of names that fail.")
    audit_min_score: int = Field(3, ge=1, le=5, description="Clusters rated below this are withheld.")
    show_conversations: bool = Field(True, description="Write raw conversations into the site / API answers.")
    # User deletion (clio_stream.privacy.deletion): the API records a request, the process owning publish_dir carries it out.
    deletion_denylist_refresh_s: float = Field(5.0, gt=0, description="Workers reload the deny-list of deleted "
                                               "users at least this often before writing a batch.")
    deletion_sweep_delay_s: float = Field(30.0, ge=0, description="A deletion request is finished (the user's "
                                          "points deleted once more, the request closed) no sooner than this after "
                                          "it was made, so a batch written on a deny-list loaded before it is swept "
                                          "too; keep it above deletion_denylist_refresh_s plus a batch's write time.")
