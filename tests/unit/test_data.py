import json

import pytest

from clio_stream.batch_input import load_file, load_shared_dataset
from clio_stream.stages.prepare import (
    DataError,
    prepare_conversations,
    render_conversation,
    to_conversation,
    truncate_conversation,
)
from clio_stream.domain.conversation import Conversation, Message


def conv(*texts):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def test_accepts_seed_lists_maps_and_sharegpt():
    c = to_conversation(conv("hi", "hello"), 0)
    assert c.id == "conv-0" and [m.role for m in c.messages] == ["user", "assistant"]
    c = to_conversation({"id": "x", "user_id": 7, "conversation": conv("a"), "timestamp": "2024-01-01T00:00:00Z"}, 1)
    assert c.id == "x" and c.user_id == "7" and c.timestamp == 1704067200.0
    c = to_conversation({"id": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, 2)
    assert [m.role for m in c.messages] == ["user", "assistant"]


@pytest.mark.parametrize("record, match", [
    ("just a string", "expected a conversation"),
    ({"id": "a"}, "needs a 'conversation'"),
    ({"id": "a", "conversation": "text"}, "must be a list"),
    ([{"role": "wizard", "content": "x"}], "unknown role"),
    ([{"role": "user", "content": 5}], "'content' must be a string"),
    ([["user", "x"]], "a turn must be a map"),
    ({"id": "a", "conversation": [], "timestamp": "yesterday"}, "record 3"),
])
def test_bad_records_name_the_record(record, match):
    with pytest.raises(DataError, match=match):
        to_conversation(record, 3)


def test_prepare_skips_empty_and_dedups():
    data = [conv("a", "b"), conv(), conv("  "), conv("a", "b"), conv("c")]
    out, stats = prepare_conversations(data)
    assert [c.id for c in out] == ["conv-0", "conv-4"]
    assert stats.empty_skipped == 2 and stats.duplicates_removed == 1 and stats.kept == 2


def test_prepare_rejects_non_lists():
    with pytest.raises(DataError, match="list of conversations"):
        prepare_conversations("not a list")
    with pytest.raises(DataError, match="duplicate conversation id"):
        prepare_conversations([{"id": "a", "conversation": conv("x")}, {"id": "a", "conversation": conv("y")}])


def test_truncate_keeps_whole_turns():
    c = to_conversation(conv("one two three", "four five six", "seven eight nine"), 0)
    count = lambda s: len(s.split())  # noqa: E731
    short, was = truncate_conversation(c, 25, count)  # 3 words + 8 overhead per turn: two turns fit
    assert was and len(short.messages) == 2 and short.messages[1].content == "four five six"
    same, was = truncate_conversation(c, 100, count)
    assert not was and same is c
    first_only, was = truncate_conversation(to_conversation(conv("w " * 100), 0), 20, count)
    assert was and 0 < len(first_only.messages[0].content) < 200


def test_render_tags_each_turn():
    text = render_conversation(Conversation(id="1", messages=[Message(role="user", content="hi")]))
    assert text == "<user>\nhi\n</user>"


def test_load_file_formats(tmp_path):
    recs = [{"id": "a", "conversation": conv("x")}, {"id": "b", "conversation": conv("y")}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    (tmp_path / "d.json").write_text(json.dumps(recs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        assert [r["id"] for r in load_file(tmp_path / name)] == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(DataError, match="line 2"):
        load_file(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="unsupported"):
        load_file(tmp_path / "d.jsonl").__class__  # noqa: B018
        (tmp_path / "x.txt").write_text("")
        load_file(tmp_path / "x.txt")


def test_shared_datasets_load():
    data = load_shared_dataset("banking77", "../shared/data", n=5)
    assert len(data) == 5 and all(d["label"] for d in data)
    # MT-Bench repeats answers across its records: de-duplication must catch exact copies only.
    records = load_shared_dataset("mt_bench", "../shared/data", n=200)
    out, stats = prepare_conversations(records)
    distinct = {tuple((m["role"], m["content"]) for m in r["conversation"]) for r in records}
    assert len(out) == len(distinct) and stats.duplicates_removed == 200 - len(distinct)


def test_truncated_json_list_keeps_complete_items(tmp_path):
    from clio_stream.batch_input import _read_json_list_tolerant

    p = tmp_path / "t.json"
    p.write_text('[{"a": 1}, {"b": [1, 2]},\n {"c": "unterminated')
    assert _read_json_list_tolerant(p) == [{"a": 1}, {"b": [1, 2]}]
    p.write_text('[{"a": 1}]')
    assert _read_json_list_tolerant(p) == [{"a": 1}]


def test_all_shared_datasets_load_completely():
    assert len(load_shared_dataset("arena_hard", "../shared/data")) == 750
    assert len(load_shared_dataset("mt_bench", "../shared/data")) == 1000
    assert len(load_shared_dataset("banking77", "../shared/data")) == 3080
