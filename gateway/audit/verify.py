"""The verifier: proves a stream of audit records was neither altered, reordered, nor cut.

This module owns the verification algorithm of docs/audit-format.md ("Verifying"), step
for step, and the report it produces. It reads records from any source (a spool, a Kafka
topic) as :class:`gateway.audit.batch.SourcedRecord` items, in the order the source
delivers them, and trusts nothing a signature does not cover: the envelope's key id, a
Kafka message key and a spool directory's name are hints that are checked against the
signed payload, never believed.

Version 1 and version 2 (zstd-compressed) records are read alike, and may be mixed in one
chain. A version 2 payload is decompressed only after its signature verified, and never
beyond :data:`gateway.audit.batch.MAX_PAYLOAD_BYTES`. So a version 2 record that fails the
signature cannot be named by what it claims to be (that is inside bytes nobody vouched
for): it is named by its container (the spool directory's or Kafka key's chain) and, once
the input is read, by its position, when it sits exactly where that chain misses a batch.

Findings have a severity. A *problem* means the evidence is incomplete or not authentic
(``Report.ok`` is false). A *warning* is worth an auditor's attention but proves nothing
is missing: a worker that crashed (its epoch has no close batch, but the next epoch's
signed link confirms which batch was its last), history older than the input, a torn
write at the end of a live spool. Exact duplicates (the same bytes again, as Kafka
redelivery after a restart produces) are dropped and counted, never emitted twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from gateway.audit.batch import (
    FORMAT_VERSION_ZSTD,
    FORMAT_VERSIONS,
    GENESIS_HASH,
    Batch,
    BatchHeader,
    ParsedRecord,
    PayloadError,
    RecordError,
    SourcedRecord,
    decode_header,
    parse_record,
    partition_key,
    payload_json,
    payload_prefix,
    signed_message,
)
from gateway.audit.events import SCHEMA_VERSION, Event

__all__ = [
    "ChainStats",
    "Finding",
    "Report",
    "VerifiedBatch",
    "Verifier",
    "verify_records",
]

Severity = Literal["problem", "warning"]


class _RawBatch(BatchHeader, kw_only=True, frozen=True, gc=False):
    """A payload with its events still undecoded."""

    events: list[msgspec.Raw]


_raw_decoder = msgspec.json.Decoder(_RawBatch)
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
#: Duplicates listed individually in a report; beyond this only counted.
MAX_LISTED_DUPLICATES = 1000
#: Of an authentic version 2 payload that is refused, this much is decompressed to find
#: the batch's name (the header members come before the events).
_NAME_PREFIX_BYTES = 64 * 1024
_EVENTS_MEMBER = re.compile(rb',\s*"events"\s*:')
_READS = f"record versions {' and '.join(map(str, sorted(FORMAT_VERSIONS)))}"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the verifier found, naming the batch and where it was read."""

    severity: Severity
    message: str
    source: str = ""
    gateway: str | None = None
    worker: int | None = None
    epoch: str | None = None
    seq: int | None = None

    def where(self) -> str:
        parts = []
        if self.gateway is not None:
            parts.append(f"{self.gateway}/worker-{self.worker}")
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.seq is not None:
            parts.append(f"seq {self.seq}")
        text = " ".join(parts)
        if self.source:
            text = f"{text} ({self.source})" if text else self.source
        return text

    def __str__(self) -> str:
        where = self.where()
        return f"{self.severity}: {where}: {self.message}" if where else (
            f"{self.severity}: {self.message}"
        )


@dataclass(slots=True)
class ChainStats:
    """What was verified of one worker chain."""

    gateway: str
    worker: int
    epochs: int = 0
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    first_at: int = 0  # ns, earliest batch seal time seen
    last_at: int = 0


@dataclass(slots=True)
class Report:
    """The verifier's result. ``ok``: no problems (warnings allowed)."""

    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    chains: dict[tuple[str, int], ChainStats] = field(default_factory=dict)
    records: int = 0  # items read, duplicates and rejected ones included
    batches: int = 0  # accepted (verified, not duplicate)
    events: int = 0  # in accepted batches
    duplicates: int = 0
    #: The first MAX_LISTED_DUPLICATES duplicates: which batch, and both sources.
    duplicate_list: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)"
        return (
            f"{verdict}; {len(self.chains)} chain(s), {self.batches} batches, "
            f"{self.events} events verified; {self.duplicates} duplicate(s) dropped; "
            f"{len(self.warnings)} warning(s)"
        )


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    """An accepted batch: authentic, and new. Its events are in ``batch.events``."""

    batch: Batch
    hash: str  # SHA-256 of the record, hex
    source: str


@dataclass(slots=True)
class _Seen:
    hash: str
    prev: str
    source: str
    kind: str
    ordinal: int  # position in the input (report.records when it was read)


@dataclass(slots=True)
class _Unplaced:
    """A rejected record whose batch is unknown (see the module docstring)."""

    key: bytes | None  # the container's chain key
    source: str
    ordinal: int
    finding: Finding  # the problem reported for it, completed if its place is inferred


@dataclass(slots=True)
class _Epoch:
    id: str
    seqs: dict[int, _Seen] = field(default_factory=dict)
    max_seq: int = -1
    close_seq: int | None = None
    successor: str | None = None  # the epoch that linked to this one
    confirmed_last: int | None = None  # seq the successor's link confirms as the last
    first_source: str = ""
    stray: bool = False  # appeared mid-stream without its open batch (already reported)


@dataclass(slots=True)
class _Chain:
    stats: ChainStats
    epochs: dict[str, _Epoch] = field(default_factory=dict)
    current: _Epoch | None = None


class Verifier:
    """Feed records in the order read; call :meth:`finish` for the report.

    ``allow_open_tail``: the last epoch of a chain may lack its close batch (a running
    gateway) - a warning instead of a problem. ``partial_history``: the input may start
    in the middle of an epoch (Kafka retention, trimmed spool) - a warning instead of a
    problem for the batches before the first one seen.
    """

    def __init__(
        self,
        public_keys: dict[str, VerifyKey],
        *,
        allow_open_tail: bool = False,
        partial_history: bool = False,
    ) -> None:
        if not public_keys:
            raise ValueError("at least one public key is needed to verify anything")
        self.keys = dict(public_keys)
        self.allow_open_tail = allow_open_tail
        self.partial_history = partial_history
        self.report = Report()
        self._chains: dict[tuple[str, int], _Chain] = {}
        # record hash -> (gateway, worker, epoch, seq, source) of every accepted record
        self._hashes: dict[str, tuple[str, int, str, int, str]] = {}
        # (gateway, worker, epoch, seq) a rejected record claimed -> its source: the gap it
        # leaves is that record, already reported, not a second problem.
        self._rejected: dict[tuple[str, int, str, int], str] = {}
        # Rejected records whose place is unknown (a version 2 record whose signature
        # fails is never decompressed), to explain the gaps they leave.
        self._unplaced: list[_Unplaced] = []
        self._finished = False

    # ------------------------------------------------------------------ findings

    def _add(
        self,
        severity: Severity,
        message: str,
        source: str = "",
        header: BatchHeader | None = None,
        *,
        gateway: str | None = None,
        worker: int | None = None,
        epoch: str | None = None,
        seq: int | None = None,
    ) -> None:
        if header is not None:
            gateway, worker = header.gateway, header.worker
            epoch, seq = header.epoch, header.seq
        finding = Finding(severity, message, source, gateway, worker, epoch, seq)
        (self.report.problems if severity == "problem" else self.report.warnings).append(finding)

    def _problem(self, message: str, source: str, header: BatchHeader | None = None) -> None:
        self._add("problem", message, source, header)

    # ------------------------------------------------------------------ input

    def feed(
        self, item: SourcedRecord | bytes, source: str = "", key: bytes | None = None
    ) -> VerifiedBatch | None:
        """Check one record; returns it if it is authentic and new, else ``None`` (the
        reason, if any, is in the report)."""
        if isinstance(item, bytes):
            item = SourcedRecord(item, source, key)
        record, source = item.record, item.source
        self.report.records += 1
        if item.error:
            self._add("warning" if item.tail else "problem", item.error, source)
        if not record:
            return None

        digest = hashlib.sha256(record).hexdigest()
        if (known := self._hashes.get(digest)) is not None:
            self._duplicate(known, item)
            return None

        try:
            parsed = parse_record(record)
        except RecordError as exc:
            self._problem(f"malformed record: {exc}", source)
            return None
        claimed = _claimed(parsed)
        signer = self._check_signature(parsed, claimed, item)
        if signer is None:
            self._reject(claimed, item)
            return None

        # Authentic: only now is a version 2 payload decompressed (bounded).
        try:
            text = payload_json(parsed)
        except PayloadError as exc:
            claimed = claimed or _named_by_prefix(parsed)
            self._forged_envelope(parsed, signer, claimed, item)
            self._add(
                "problem",
                f"the signed payload cannot be read, the batch is refused: {exc}"
                + ("" if claimed is None else " (named by the beginning of its payload)"),
                source, claimed, **_container_names(item.key),
            )
            self._reject(claimed, item)
            return None
        if claimed is None:
            claimed = _claimed_json(text)
        self._forged_envelope(parsed, signer, claimed, item)
        # An authentic payload refused from here on still names its place (as far as it
        # can), so that the gap it leaves is this problem, not a second one.
        try:
            raw = _raw_decoder.decode(text)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._add(
                "problem",
                f"the signed payload does not follow the record format (version "
                f"{parsed.version}): {exc}",
                source, claimed, **_container_names(item.key),
            )
            self._reject(claimed, item)
            return None
        if raw.version != parsed.version:
            self._problem(
                f"the payload's version member is {raw.version}, but the record's header "
                f"says version {parsed.version}; they must be equal",
                source, raw,
            )
            self._reject(raw, item)
            return None
        if raw.schema != SCHEMA_VERSION:
            self._problem(
                f"unsupported payload version {raw.version} / event schema "
                f"{raw.schema} (this verifier reads {_READS} / event schema {SCHEMA_VERSION})",
                source, raw,
            )
            self._reject(raw, item)
            return None
        batch = self._decode_events(raw, source)
        if batch.key_id != signer:
            self._problem(
                f"forged key id: the signed payload names key {batch.key_id}, but the "
                f"record is signed by key {signer}",
                source, batch,
            )
        if item.key is not None and item.key != partition_key(batch.gateway, batch.worker):
            self._problem(
                f"the container's chain key {item.key!r} disagrees with the signed payload "
                f"({partition_key(batch.gateway, batch.worker)!r}): an unsigned key was "
                "edited, or the record was moved to another chain's place",
                source, batch,
            )
        if self._place(batch, digest, source):
            self._hashes[digest] = (batch.gateway, batch.worker, batch.epoch, batch.seq, source)
            return VerifiedBatch(batch, digest, source)
        return None

    def _reject(self, claimed: BatchHeader | None, item: SourcedRecord) -> None:
        """Remember the place a rejected record claimed (or that its place is unknown),
        so that the gap it leaves is explained rather than reported anew. Call it right
        after reporting the record's problem."""
        if claimed is not None:
            place = (claimed.gateway, claimed.worker, claimed.epoch, claimed.seq)
            self._rejected.setdefault(place, item.source)
        else:
            self._unplaced.append(
                _Unplaced(item.key, item.source, self.report.records, self.report.problems[-1])
            )

    def _decode_events(self, raw: _RawBatch, source: str) -> Batch:
        # Event by event: one event a writer got wrong must not hide the others of its
        # batch, which the signature proves just as well.
        events: list[Event] = []
        for index, raw_event in enumerate(raw.events):
            try:
                events.append(_event_decoder.decode(raw_event))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self._problem(
                    f"event {index} of this batch does not follow event schema "
                    f"{SCHEMA_VERSION} and is left out: {exc}",
                    source, raw,
                )
        return Batch(
            version=raw.version, schema=raw.schema, gateway=raw.gateway, worker=raw.worker,
            epoch=raw.epoch, seq=raw.seq, kind=raw.kind, prev=raw.prev, key_id=raw.key_id,
            at=raw.at, link=raw.link, events=events,
        )

    def events(self, items: Iterable[SourcedRecord]) -> Iterator[tuple[Batch, Event]]:
        """Feed ``items``; yield the events of every accepted batch, in order."""
        for item in items:
            verified = self.feed(item)
            if verified is not None:
                for event in verified.batch.events:
                    yield verified.batch, event

    # ------------------------------------------------------------------ signature

    def _check_signature(
        self, parsed: ParsedRecord, claimed: BatchHeader | None, item: SourcedRecord
    ) -> str | None:
        """The id of the trusted key that signed ``parsed``, or None (reported). A signer
        other than the envelope's key is reported by :meth:`_forged_envelope`, once the
        payload can name the batch."""
        message = signed_message(parsed.signed_part)
        key = self.keys.get(parsed.key_id)
        if key is not None and _verifies(key, message, parsed.signature):
            return parsed.key_id
        # Not the key the envelope names. Is it another trusted key? Then only the
        # unsigned envelope hint was changed; the content is still authentic.
        for other_id, other in self.keys.items():
            if other_id != parsed.key_id and _verifies(other, message, parsed.signature):
                return other_id
        if key is None:
            text = (
                f"signed with unknown key {parsed.key_id}: not among the "
                f"{len(self.keys)} trusted public key(s); the record cannot be authenticated"
            )
        else:
            text = (
                f"bad signature: the record was altered after it was signed by key "
                f"{parsed.key_id}"
            )
        self._add("problem", text + _claim_note(parsed, claimed, item.key), item.source,
                  claimed, **_container_names(item.key))
        return None

    def _forged_envelope(
        self, parsed: ParsedRecord, signer: str, claimed: BatchHeader | None,
        item: SourcedRecord,
    ) -> None:
        if signer == parsed.key_id:
            return
        self._add(
            "problem",
            f"forged key id: the envelope names key {parsed.key_id}"
            f"{'' if parsed.key_id in self.keys else ' (unknown)'}, but the record is signed "
            f"by key {signer}; the unsigned envelope was edited (content is authentic)",
            item.source, claimed, **_container_names(item.key),
        )

    # ------------------------------------------------------------------ duplicates

    def _duplicate(self, known: tuple[str, int, str, int, str], item: SourcedRecord) -> None:
        gateway, worker, epoch, seq, first_source = known
        report = self.report
        report.duplicates += 1
        self._chains[(gateway, worker)].stats.duplicates += 1
        if len(report.duplicate_list) < MAX_LISTED_DUPLICATES:
            report.duplicate_list.append(
                Finding(
                    "warning",
                    f"exact duplicate (redelivery or replay) of the batch first read at "
                    f"{first_source}; dropped",
                    item.source, gateway, worker, epoch, seq,
                )
            )
        if item.key is not None and item.key != partition_key(gateway, worker):
            self._add(
                "problem",
                f"the container's chain key {item.key!r} disagrees with the signed payload "
                f"({partition_key(gateway, worker)!r}) of this duplicate",
                item.source, gateway=gateway, worker=worker, epoch=epoch, seq=seq,
            )

    # ------------------------------------------------------------------ chain

    def _chain(self, batch: Batch) -> _Chain:
        chain_key = (batch.gateway, batch.worker)
        chain = self._chains.get(chain_key)
        if chain is None:
            chain = self._chains[chain_key] = _Chain(ChainStats(batch.gateway, batch.worker))
            self.report.chains[chain_key] = chain.stats
        return chain

    def _place(self, batch: Batch, digest: str, source: str) -> bool:
        """Check ``batch`` against its chain and record it; False if it is rejected."""
        chain = self._chain(batch)
        epoch = chain.epochs.get(batch.epoch)
        seq = batch.seq
        if epoch is not None and (seen := epoch.seqs.get(seq)) is not None:
            self._problem(
                f"conflicting batch: a different record for the same epoch and seq was "
                f"verified at {seen.source}; two signed batches claim one place in the chain",
                source, batch,
            )
            return False

        if (batch.kind == "open") != (seq == 0):
            self._problem(
                f"a {batch.kind!r} batch at seq {seq}: an epoch opens with seq 0 and only there",
                source, batch,
            )
        if epoch is None:
            epoch = chain.epochs[batch.epoch] = _Epoch(batch.epoch, first_source=source)
            chain.stats.epochs += 1
            if seq == 0:
                self._open_epoch(chain, epoch, batch, source)
            elif chain.current is None:
                self._add(
                    "warning" if self.partial_history else "problem",
                    f"the input starts in the middle of epoch {batch.epoch}: batches 0..{seq - 1}"
                    " (its open batch among them) are not in the input",
                    source, batch,
                )
                chain.current = epoch
            else:
                epoch.stray = True
                self._problem(
                    f"batch of epoch {batch.epoch}, whose open batch was never seen, arrives "
                    f"while epoch {chain.current.id} is current: replayed from another "
                    f"place, or batches 0..{seq - 1} of that epoch are missing",
                    source, batch,
                )
        elif epoch is not chain.current:
            self._problem(
                f"late batch of epoch {batch.epoch} arrives after epoch "
                f"{chain.current.id if chain.current else '?'} began: reordered or replayed",
                source, batch,
            )

        # Position inside the epoch.
        if seq < epoch.max_seq:
            self._problem(
                f"out of order: arrives after seq {epoch.max_seq} of the same epoch "
                f"(read at {epoch.seqs[epoch.max_seq].source})",
                source, batch,
            )
        if epoch.close_seq is not None and seq > epoch.close_seq:
            self._problem(
                f"batch after the close batch (seq {epoch.close_seq}) of its epoch",
                source, batch,
            )
        if batch.kind == "close":
            if epoch.max_seq > seq:
                self._problem(
                    f"close batch at seq {seq}, but seq {epoch.max_seq} of this epoch was "
                    "already seen", source, batch,
                )
            epoch.close_seq = seq if epoch.close_seq is None else min(epoch.close_seq, seq)

        # Hash chain, both ways (a late batch is checked against its successor too).
        if seq == 0:
            if batch.prev != GENESIS_HASH:
                self._problem("an open batch must have prev = 64 zeros", source, batch)
        elif (before := epoch.seqs.get(seq - 1)) is not None and batch.prev != before.hash:
            self._problem(
                f"broken chain: prev {batch.prev} is not the hash of seq {seq - 1} "
                f"({before.hash}, read at {before.source})",
                source, batch,
            )
        if (after := epoch.seqs.get(seq + 1)) is not None and after.prev != digest:
            self._problem(
                f"broken chain: seq {seq + 1} (read at {after.source}) names prev "
                f"{after.prev}, but this batch hashes to {digest}",
                source, batch,
            )

        epoch.seqs[seq] = _Seen(digest, batch.prev, source, batch.kind, self.report.records)
        epoch.max_seq = max(epoch.max_seq, seq)
        stats = chain.stats
        stats.batches += 1
        stats.events += len(batch.events)
        stats.first_at = min(stats.first_at, batch.at) if stats.first_at else batch.at
        stats.last_at = max(stats.last_at, batch.at)
        self.report.batches += 1
        self.report.events += len(batch.events)
        return True

    def _open_epoch(self, chain: _Chain, epoch: _Epoch, batch: Batch, source: str) -> None:
        link, previous = batch.link, chain.current
        chain.current = epoch
        if previous is None:
            if link is not None and link.epoch not in chain.epochs:
                self._add(
                    "warning",
                    f"history before this epoch is not in the input: it links to seq "
                    f"{link.seq} of epoch {link.epoch}, which was not seen",
                    source, batch,
                )
            return
        previous.successor = epoch.id
        last = previous.max_seq
        last_seen = previous.seqs.get(last)
        where = f" (read at {last_seen.source})" if last_seen else ""
        if link is None:
            self._problem(
                f"opens without a link to the previous epoch {previous.id} of this worker "
                f"(its last batch seen: seq {last}{where}): the worker started without the "
                "spool its predecessor left",
                source, batch,
            )
        elif link.epoch != previous.id:
            if link.epoch in chain.epochs:
                what = "an earlier epoch: epochs are out of order"
            else:
                what = "an epoch not in the input: a whole epoch is missing"
            self._problem(
                f"links to seq {link.seq} of epoch {link.epoch}, {what}; the epoch before it "
                f"in the input is {previous.id} (last batch seq {last}{where})",
                source, batch,
            )
        elif link.seq > last:
            self._problem(
                f"truncated epoch: the link says epoch {previous.id} ended with seq "
                f"{link.seq}, but the input has it only up to seq {last}{where}: batches "
                f"{last + 1}..{link.seq} are missing",
                source, batch,
            )
        elif link.seq < last:
            self._problem(
                f"the link says epoch {previous.id} ended with seq {link.seq}, but the input "
                f"has it continue to seq {last}{where}: batches were added after the worker "
                "that wrote them stopped",
                source, batch,
            )
        elif last_seen is not None and link.hash != last_seen.hash:
            self._problem(
                f"the link to seq {link.seq} of epoch {previous.id} names hash {link.hash}, "
                f"but that batch{where} hashes to {last_seen.hash}",
                source, batch,
            )
        elif link.closed != (previous.close_seq == last):
            self._problem(
                f"the link says epoch {previous.id} was {'' if link.closed else 'not '}"
                "closed, but its last batch says otherwise",
                source, batch,
            )
        else:
            previous.confirmed_last = last

    # ------------------------------------------------------------------ end

    def finish(self) -> Report:
        """Report what only the end of the input can tell: missing batches inside epochs
        and epochs without their close batch."""
        if self._finished:
            return self.report
        self._finished = True
        for (gateway, worker), chain in self._chains.items():
            for epoch in chain.epochs.values():
                self._gaps(gateway, worker, epoch)
                self._closure(gateway, worker, chain, epoch)
        return self.report

    def _gaps(self, gateway: str, worker: int, epoch: _Epoch) -> None:
        seqs = sorted(epoch.seqs)
        for before, after in itertools.pairwise(seqs):
            # Places a rejected record claimed were reported with that record.
            unexplained = [
                seq for seq in range(before + 1, after)
                if (gateway, worker, epoch.id, seq) not in self._rejected
            ]
            if not unexplained:
                continue
            first, last = unexplained[0], unexplained[-1]
            seen_before, seen_after = epoch.seqs[before], epoch.seqs[after]
            between = (
                f"between seq {before} (read at {seen_before.source}) and seq {after} "
                f"(read at {seen_after.source})"
            )
            if self._place_unplaced(gateway, worker, epoch, unexplained, between):
                continue
            missing = (
                f"batch {first} is" if len(unexplained) == 1
                else f"batches {first}..{last} are" if last - first + 1 == len(unexplained)
                else f"batches {', '.join(map(str, unexplained))} are"
            )
            self._add(
                "problem",
                f"{missing} missing {between}" + self._unplaced_note(gateway, worker),
                seen_after.source,
                gateway=gateway, worker=worker, epoch=epoch.id, seq=first,
            )

    def _place_unplaced(
        self, gateway: str, worker: int, epoch: _Epoch, missing: list[int], between: str
    ) -> bool:
        """If the missing seqs are exactly the rejected records that this chain's container
        delivered between the batches around the gap (one each, in order), those records
        are the missing batches: name them so instead of reporting the gap a second time,
        as a version 1 record's claimed place would. Their problems stand."""
        if missing[-1] - missing[0] + 1 != len(missing):
            return False
        low = epoch.seqs[missing[0] - 1].ordinal
        high = epoch.seqs[missing[-1] + 1].ordinal
        chain_key = partition_key(gateway, worker)
        # Records other containers (chains) delivered meanwhile are not candidates; one
        # whose container names no chain could be anyone's: then nothing is inferred.
        inside = [u for u in self._unplaced
                  if low < u.ordinal < high and u.key in (None, chain_key)]
        if len(inside) != len(missing) or any(u.key is None for u in inside):
            return False
        problems = self.report.problems
        for seq, unplaced in zip(missing, inside, strict=True):
            finding = unplaced.finding
            problems[problems.index(finding)] = dataclasses.replace(
                finding, gateway=gateway, worker=worker, epoch=epoch.id, seq=seq,
                message=f"{finding.message}; by its position in its chain's container it is "
                f"batch {seq}, the one missing {between}",
            )
            self._unplaced.remove(unplaced)
        return True

    def _unplaced_note(self, gateway: str, worker: int) -> str:
        """Rejected records that may fill a gap of this chain: unplaced ones whose
        container names this chain, or no chain."""
        chain_key = partition_key(gateway, worker)
        sources = [u.source for u in self._unplaced if u.key in (None, chain_key)]
        if not sources:
            return ""
        listed = ", ".join(sources[:3]) + (
            f" and {len(sources) - 3} more" if len(sources) > 3 else ""
        )
        return (
            f"; the rejected record(s) at {listed}, whose batch could not be named, may be "
            "what is missing"
        )

    def _closure(self, gateway: str, worker: int, chain: _Chain, epoch: _Epoch) -> None:
        if epoch.close_seq is not None or epoch.max_seq < 0 or epoch.stray:
            return
        severity: Severity
        if epoch.confirmed_last is not None:
            severity, message = "warning", (
                f"unclosed (worker stopped without closing): the next epoch "
                f"{epoch.successor}'s signed link confirms seq {epoch.confirmed_last} was its "
                "last batch, so nothing is missing (a crash or kill -9)"
            )
        elif epoch.successor is not None:
            severity, message = "problem", (
                f"unclosed (worker stopped without closing), and the next epoch "
                f"{epoch.successor}'s link does not confirm its end (see above)"
            )
        elif epoch is chain.current and self.allow_open_tail:
            severity, message = "warning", (
                "unclosed: the worker is still running, or stopped without closing"
            )
        else:
            severity, message = "problem", (
                "unclosed (worker stopped without closing): no close batch after this one, "
                "and no later epoch confirms where it ended; batches may have been cut from "
                "the end"
            )
        self._add(
            severity, message, epoch.seqs[epoch.max_seq].source,
            gateway=gateway, worker=worker, epoch=epoch.id, seq=epoch.max_seq,
        )


def _verifies(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(message, signature)
    except BadSignatureError:
        return False
    return True


def _claimed(parsed: ParsedRecord) -> BatchHeader | None:
    """The header a record *claims*, to name it in a finding before it is verified: only
    for version 1, whose payload is readable as it is; a version 2 payload is not
    decompressed before it is authenticated."""
    if parsed.version == FORMAT_VERSION_ZSTD:
        return None
    return _claimed_json(parsed.payload)


def _claimed_json(text: bytes) -> BatchHeader | None:
    try:
        return decode_header(text)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _named_by_prefix(parsed: ParsedRecord) -> BatchHeader | None:
    """The header of an authentic version 2 payload that cannot be read whole (corrupt or
    too large), from the beginning of what it decompresses to: pgwarden writes the header
    members first, so they can be read without the events. None if that fails."""
    prefix = payload_prefix(parsed.payload, _NAME_PREFIX_BYTES)
    # `, "events":` cannot occur inside a JSON string (a quote there is escaped), so the
    # first one ends the header members of the top-level object.
    match = _EVENTS_MEMBER.search(prefix)
    return None if match is None else _claimed_json(prefix[: match.start()] + b"}")


def _container_chain(key: bytes | None) -> tuple[str | None, int | None]:
    """(gateway, worker) as a container's chain key names them (unsigned), if it does."""
    if key is None:
        return None, None
    gateway, _, worker = key.decode("utf-8", "replace").rpartition(":")
    if not gateway or not worker.isdigit():
        return None, None
    return gateway, int(worker)


def _container_names(key: bytes | None) -> dict[str, Any]:
    """Finding fields naming the chain as the container does: used only for a record
    whose payload cannot name it (a claimed or signed header takes precedence)."""
    gateway, worker = _container_chain(key)
    return {"gateway": gateway, "worker": worker}


def _claim_note(parsed: ParsedRecord, claimed: BatchHeader | None, key: bytes | None) -> str:
    if claimed is not None:
        return " (the batch is named as its unverified payload claims)"
    if parsed.version == FORMAT_VERSION_ZSTD:
        named = (
            "; named by its container's unsigned chain key"
            if _container_chain(key)[0] is not None else ""
        )
        return (
            " (its payload is compressed, record version 2, and is never decompressed "
            f"before it is authenticated, so the batch it claims to be is not read{named})"
        )
    return " (its payload does not even parse)"


def verify_records(
    items: Iterable[SourcedRecord | bytes],
    public_keys: dict[str, VerifyKey],
    *,
    allow_open_tail: bool = False,
    partial_history: bool = False,
) -> Report:
    """Verify ``items`` (read in this order) and return the report."""
    verifier = Verifier(
        public_keys, allow_open_tail=allow_open_tail, partial_history=partial_history
    )
    for item in items:
        verifier.feed(item)
    return verifier.finish()
