"""``clio-stream dlq list|show|replay``: look at the dead-letter topic and send records back once fixed."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys

from clio_stream.cli.options import streaming_settings
from clio_stream.settings import ClioSettings
from clio_stream.streaming.connection import KafkaConnection
from clio_stream.streaming.dead_letters import DeadLetter, DeadLetterEntry, read_dead_letters, replay

_REASON_WIDTH = 70


def _settings(args: argparse.Namespace) -> ClioSettings:
    settings = streaming_settings(args)
    return settings.with_overrides(dlq_topic=args.dlq_topic) if args.dlq_topic else settings


def _selected(args: argparse.Namespace):
    def select(letter: DeadLetter) -> bool:
        return (not args.reason or args.reason in letter.reason) and (not args.source or letter.topic == args.source)

    return select


def _entries(settings: ClioSettings) -> list[DeadLetterEntry]:
    return list(read_dead_letters(KafkaConnection.from_settings(settings), settings.dlq_topic))


def cmd_list(args: argparse.Namespace) -> int:
    """One line per dead letter: DLQ position, when, source position, size, reason."""
    settings = _settings(args)
    select = _selected(args)
    out = sys.stdout
    out.write(f"{'dlq':<10} {'when (UTC)':<20} {'source':<32} {'bytes':>8}  reason\n")
    shown = 0
    for e in _entries(settings):
        if e.letter is None:
            out.write(f"{e.position:<10} {'-':<20} {'-':<32} {'-':>8}  {e.error}\n")
            continue
        if not select(e.letter):
            continue
        when = dt.datetime.fromtimestamp(e.letter.time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        size = e.letter.value_size if e.letter.value_size is not None else len(e.letter.value or b"")
        cut = " (cut)" if e.letter.truncated else ""
        out.write(f"{e.position:<10} {when:<20} {e.letter.source:<32} {size:>8}  "
                  f"{e.letter.reason[:_REASON_WIDTH]}{cut}\n")
        shown += 1
        if args.limit and shown >= args.limit:
            break
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The whole dead letter at ``PARTITION:OFFSET`` as JSON; key and value as base64 (they are raw bytes)."""
    settings = _settings(args)
    for e in _entries(settings):
        if e.position == args.position:
            if e.letter is None:
                raise ValueError(f"{args.position}: {e.error}")
            doc = e.letter.model_dump()
            for field in ("key", "value"):
                raw = doc.pop(field)
                doc[f"{field}_base64"] = None if raw is None else base64.b64encode(raw).decode()
            sys.stdout.write(json.dumps({"dlq_position": e.position, **doc}, indent=2) + "\n")
            return 0
    raise ValueError(f"no record at {args.position} in {settings.dlq_topic!r} (positions are PARTITION:OFFSET)")


def cmd_replay(args: argparse.Namespace) -> int:
    """Send the selected dead letters' original bytes back to their source topic (or ``--to``)."""
    settings = _settings(args)
    if not (args.reason or args.source or args.all):
        raise ValueError("say which dead letters to replay: --reason TEXT, --source TOPIC, or --all")
    report = replay(KafkaConnection.from_settings(settings), _entries(settings), select=_selected(args),
                    to_topic=args.to, dry_run=args.dry_run)
    sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers (default: settings, 127.0.0.1:9092)")
    sp.add_argument("--dlq-topic", help="dead-letter topic (default: settings dlq_topic)")


def _filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--reason", help="only dead letters whose reason contains this text (e.g. llm_rejected)")
    sp.add_argument("--source", help="only dead letters from this source topic")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    dlq = sub.add_parser("dlq", help="inspect and replay the dead-letter topic")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    sp = dsub.add_parser("list", help="one line per dead letter (reads without a consumer group)")
    _common(sp)
    _filters(sp)
    sp.add_argument("--limit", type=int, default=0, help="show at most N (default: all)")
    sp.set_defaults(func=cmd_list)
    sp = dsub.add_parser("show", help="one dead letter as JSON")
    _common(sp)
    sp.add_argument("position", help="PARTITION:OFFSET in the dead-letter topic, as `dlq list` prints it")
    sp.set_defaults(func=cmd_show)
    sp = dsub.add_parser("replay", help="produce selected dead letters' original records again")
    _common(sp)
    _filters(sp)
    sp.add_argument("--all", action="store_true", help="replay every dead letter")
    sp.add_argument("--to", help="target topic (default: each record's source topic)")
    sp.add_argument("--dry-run", action="store_true", help="count what would be replayed; send nothing")
    sp.set_defaults(func=cmd_replay)
