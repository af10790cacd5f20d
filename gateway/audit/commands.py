"""What ``pgwarden keys generate``, ``pgwarden audit verify`` and ``pgwarden audit tail``
do, behind the argument parsing of :mod:`gateway.cli`.

This module owns the commands' output (the verification report, the JSON lines of
``tail``) and where records come from: spool directories now, and a Kafka topic through
:func:`kafka_source` when ``gateway.audit.kafka`` provides ``read_topic``. Every source
yields :class:`~gateway.audit.batch.SourcedRecord` items, so the verifier does not care
which one it reads.

Exit codes: 0 verified (no problems), 1 problems found, 2 bad usage or unreadable keys.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TextIO

import msgspec

from gateway.audit.batch import Batch, SourcedRecord
from gateway.audit.ecs import timestamp, to_ecs
from gateway.audit.events import Event
from gateway.audit.keys import AuditKeyError, generate_key, load_public_keys
from gateway.audit.spool import SpoolError, follow_spool, read_spool
from gateway.audit.verify import Finding, Report, Verifier

__all__ = ["audit_tail", "audit_verify", "kafka_source", "keys_generate"]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
#: Duplicates listed one by one in the text report before "... and N more".
LISTED_DUPLICATES = 20

_json = msgspec.json.Encoder()


class CommandError(Exception):
    """A usage or environment problem, printed as ``pgwarden: <message>``, exit 2."""


# ---------------------------------------------------------------------- keys


def keys_generate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        _, kid = generate_key(args.out)
    except AuditKeyError as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {args.out} (mode 0600; set audit.signing_key_file to it)", file=out)
    print(f"public key:  {args.out}.pub (give it to whoever verifies the audit log)", file=out)
    print(f"key id:      {kid}", file=out)
    return EXIT_OK


# ---------------------------------------------------------------------- sources


def kafka_source(bootstrap: str, topic: str) -> AsyncIterator[SourcedRecord]:
    """Records of a Kafka topic, read by ``gateway.audit.kafka.read_topic``.

    The seam for the Kafka transport: that module yields ``(key, value, partition,
    offset)`` for every message and ends at the end of the topic.
    """
    try:
        kafka = importlib.import_module("gateway.audit.kafka")
    except ImportError as exc:
        raise CommandError(f"reading Kafka is not available in this build ({exc})") from None
    read_topic: Callable[[str, str], AsyncIterator[tuple[bytes | None, bytes, int, int]]]
    read_topic = kafka.read_topic

    async def records() -> AsyncIterator[SourcedRecord]:
        async for key, value, partition, offset in read_topic(bootstrap, topic):
            yield SourcedRecord(value, f"kafka:{topic}[{partition}]@{offset}", key)

    return records()


def _sources(args: argparse.Namespace) -> Iterable[SourcedRecord] | AsyncIterator[SourcedRecord]:
    if bool(args.spool) == bool(args.kafka):
        raise CommandError("give either --spool DIR (one or more) or --kafka BOOTSTRAP")
    if args.kafka:
        if getattr(args, "follow", False):
            raise CommandError("--follow reads a spool; a Kafka consumer follows by itself")
        return kafka_source(args.kafka, args.topic)
    if getattr(args, "follow", False):
        if len(args.spool) != 1:
            raise CommandError("--follow reads one spool directory")
        return follow_spool(args.spool[0], interval=args.interval)

    def spools() -> Iterator[SourcedRecord]:
        for directory in args.spool:
            yield from read_spool(directory)

    return spools()


def _run(
    source: Iterable[SourcedRecord] | AsyncIterator[SourcedRecord],
    handle: Callable[[SourcedRecord], object],
) -> None:
    if isinstance(source, AsyncIterator):
        async def drain() -> None:
            async for item in source:
                handle(item)

        asyncio.run(drain())
    else:
        for item in source:
            handle(item)


def _keys(args: argparse.Namespace) -> Any:
    try:
        return load_public_keys(args.keys)
    except AuditKeyError as exc:
        raise CommandError(str(exc)) from None


# ---------------------------------------------------------------------- verify


def audit_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Verify every record of the sources; print the report."""
    out = out or sys.stdout
    try:
        verifier = Verifier(
            _keys(args), allow_open_tail=args.allow_open, partial_history=args.partial_history
        )
        _run(_sources(args), verifier.feed)
    except (CommandError, SpoolError) as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = verifier.finish()
    if args.json:
        out.write(_json.encode(report_dict(report)).decode() + "\n")
    else:
        print_report(report, out)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def print_report(report: Report, out: TextIO) -> None:
    """The human report: problems, warnings, duplicates, chains, then the verdict."""
    for finding in report.problems:
        print(finding, file=out)
    for finding in report.warnings:
        print(finding, file=out)
    for finding in report.duplicate_list[:LISTED_DUPLICATES]:
        print(f"duplicate: {finding.where()}: {finding.message}", file=out)
    if report.duplicates > LISTED_DUPLICATES:
        print(f"duplicate: ... and {report.duplicates - LISTED_DUPLICATES} more", file=out)
    for stats in report.chains.values():
        span = (
            f", {timestamp(stats.first_at)} .. {timestamp(stats.last_at)}"
            if stats.batches else ""
        )
        print(
            f"chain {stats.gateway}/worker-{stats.worker}: {stats.epochs} epoch(s), "
            f"{stats.batches} batches, {stats.events} events, {stats.duplicates} "
            f"duplicate(s){span}",
            file=out,
        )
    print(report.summary(), file=out)


def _finding_dict(finding: Finding) -> dict[str, Any]:
    return {
        "severity": finding.severity, "message": finding.message, "source": finding.source,
        "gateway": finding.gateway, "worker": finding.worker, "epoch": finding.epoch,
        "seq": finding.seq,
    }


def report_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-able data (``audit verify --json``)."""
    return {
        "ok": report.ok,
        "records": report.records,
        "batches": report.batches,
        "events": report.events,
        "duplicates": report.duplicates,
        "problems": [_finding_dict(f) for f in report.problems],
        "warnings": [_finding_dict(f) for f in report.warnings],
        "chains": [
            {
                "gateway": s.gateway, "worker": s.worker, "epochs": s.epochs,
                "batches": s.batches, "events": s.events, "duplicates": s.duplicates,
                "first_at": s.first_at, "last_at": s.last_at,
            }
            for s in report.chains.values()
        ],
    }


# ---------------------------------------------------------------------- tail


def event_line(batch: Batch, event: Event, fmt: str) -> bytes:
    """One JSON line for ``tail``: the event with its place in the chain, or ECS."""
    if fmt == "ecs":
        return _json.encode(to_ecs(batch, event))
    return _json.encode(
        {
            "gateway": batch.gateway, "worker": batch.worker, "epoch": batch.epoch,
            "seq": batch.seq, "event": event,
        }
    )


def audit_tail(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print verified events as JSON lines; problems go to stderr as they are found."""
    out = out or sys.stdout
    try:
        verifier = Verifier(
            _keys(args), allow_open_tail=True, partial_history=args.partial_history
        )
        source = _sources(args)
    except (CommandError, SpoolError) as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    reported = 0
    buffer = out.buffer if hasattr(out, "buffer") else None

    def handle(item: SourcedRecord) -> None:
        nonlocal reported
        verified = verifier.feed(item)
        if verified is not None:
            lines = b"".join(
                event_line(verified.batch, event, args.format) + b"\n"
                for event in verified.batch.events
            )
            if buffer is not None:
                buffer.write(lines)
                buffer.flush()
            else:
                out.write(lines.decode())
                out.flush()
        problems = verifier.report.problems
        for finding in problems[reported:]:
            print(finding, file=sys.stderr)
        reported = len(problems)

    try:
        _run(source, handle)
    except (CommandError, SpoolError) as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `pgwarden audit tail | head`
        return EXIT_OK
    report = verifier.finish()
    for finding in report.problems[reported:]:
        print(finding, file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_PROBLEMS
