"""The deny-list's pure logic: tokens, the cached reload, and what a worker drops (the store and worker are
tested for real in tests/reliability/test_deletion.py)."""

from __future__ import annotations

import time

import pytest

from clio_stream.privacy.scrub import UserMatch
from clio_stream.privacy.denylist import DenyList, deletion_token
from clio_stream.privacy.users import keyed_user_hash
from clio_stream.storage.records import ConversationRecord, FacetPoint
from clio_stream.domain.conversation import Conversation, Message
from consumers.denied import drop_denied_writes
from consumers.processing import BatchOutcome

KEY = "unit-key"


class Tokens:
    """A token source that counts its reads and can fail."""

    def __init__(self, tokens: set[str]) -> None:
        self.tokens, self.reads, self.fail = tokens, 0, False

    def deny_tokens(self) -> set[str]:
        self.reads += 1
        if self.fail:
            raise RuntimeError("store down")
        return set(self.tokens)


def _conv(cid: str, user_id: str | None) -> Conversation:
    return Conversation(id=cid, user_id=user_id, messages=[Message(role="user", content="hi")])


def test_token_is_neither_the_user_hash_nor_the_raw_id() -> None:
    h = keyed_user_hash("alice", KEY)
    token = deletion_token(h, KEY)
    assert token not in (h, "alice") and token == deletion_token(h, KEY) != deletion_token(h, "other-key")


def test_match_recognises_raw_ids_and_stored_hashes_only_of_deleted_users() -> None:
    match = UserMatch.for_user("alice", KEY)
    assert match.owns(_conv("a1", "alice"))  # a batch result keeps the raw id
    assert match.owns(_conv("a2", keyed_user_hash("alice", KEY)))  # a re-clustered one keeps the hash
    assert not match.owns(_conv("b1", "bob")) and not match.owns(_conv("n1", None))
    assert not UserMatch(KEY, frozenset()).owns(_conv("a1", "alice"))


def test_deny_list_reloads_after_refresh_and_fails_closed() -> None:
    source = Tokens(set())
    deny = DenyList(source, KEY, refresh_s=0.2)
    h = keyed_user_hash("alice", KEY)
    assert not deny.denies(h) and source.reads == 1
    source.tokens.add(deletion_token(h, KEY))
    assert not deny.denies(h) and source.reads == 1  # cached within refresh_s
    time.sleep(0.25)
    assert deny.denies(h) and source.reads == 2 and not deny.denies(keyed_user_hash("bob", KEY))
    source.fail = True
    time.sleep(0.25)
    with pytest.raises(RuntimeError):  # a worker that cannot tell retries its batch instead of writing
        deny.denies(h)


def test_drop_denied_writes_keeps_offsets_and_others() -> None:
    alice, bob = keyed_user_hash("alice", KEY), keyed_user_hash("bob", KEY)
    deny = DenyList(Tokens({deletion_token(alice, KEY)}), KEY, refresh_s=60)
    outcome = BatchOutcome(
        facet_points=[FacetPoint(conversation_id=c, facet="Request", vector=[0.0], user_hash=u)
                      for c, u in (("a", alice), ("b", bob))],
        conversations=[ConversationRecord(conversation_id=c, status="processed", user_hash=u)
                       for c, u in (("a", alice), ("b", bob))],
        dead_letters=[], deltas=[], offsets={("t", 0): (10, 11)})
    kept, dropped = drop_denied_writes(outcome, deny)
    assert dropped == 1 and kept.offsets == {("t", 0): (10, 11)}
    assert [p.conversation_id for p in kept.facet_points] == ["b"]
    assert [r.conversation_id for r in kept.conversations] == ["b"]
    assert drop_denied_writes(kept, deny) == (kept, 0)
