"""The hash chain, the chainer and the verifier, over the in-memory log and edited exports."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import Callable

import msgspec
import pytest

from eventstore import InMemoryEventLog
from relaypush.audit import (
    GENESIS,
    BreakKind,
    Chainer,
    ChainVerifier,
    ChainWindow,
    SigningKey,
    VerifyReport,
    checkpoint_message,
    decode_checkpoint,
    export_line,
    generate_signing_key,
    leaf,
    next_link,
    public_key_from_hex,
    read_export,
    verify,
)
from relaypush.audit.errors import AuditKeyError
from relaypush.config import Settings
from relaypush.domain.events import AUDIT_TENANT, AuditCheckpoint, encode_event
from relaypush.domain.streams import AUDIT_CHECKPOINT_SUBJECT
from relaypush.metrics import Registry
from tests.audit_story import STORY, append_story

KEY = SigningKey.from_hex("11" * 32)
OTHER_KEY = SigningKey.from_hex("22" * 32)


# -- the chain itself --------------------------------------------------------------------------


def test_a_link_is_the_documented_formula() -> None:
    subject = ("0000-0000-0000-0000", "client", "wallet.1 é")
    data = b'{"type":"client.registered"}'
    expected_subject = json.dumps(list(subject), separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(
        GENESIS + (7).to_bytes(8, "big") + hashlib.sha256(data).digest() + expected_subject.encode()
    ).digest()
    assert hashlib.sha256(b"relaypush audit chain v1").digest() == GENESIS
    assert next_link(GENESIS, 7, subject, data) == expected
    assert (
        leaf(subject, data)
        == hashlib.sha256(hashlib.sha256(data).digest() + expected_subject.encode()).digest()[:8]
    )


def test_a_window_keeps_links_and_leaves_from_its_start() -> None:
    window = ChainWindow()
    links = [GENESIS]
    for position in range(1, 6):
        window.add(position, ("s", str(position)), b"x" * position)
        links.append(next_link(links[-1], position, ("s", str(position)), b"x" * position))
    assert window.head == links[5]
    assert window.link_at(3) == links[3]
    assert window.leaves(2, 3) == leaf(("s", "2"), b"xx") + leaf(("s", "3"), b"xxx")
    window.forget_through(3)
    assert window.start == 4
    assert window.link_at(4) == links[4]
    with pytest.raises(IndexError):
        window.link_at(3)
    window.skip(6, ("s",), b"")
    assert window.head == next_link(links[5], 6, ("s",), b"")
    assert window.start == 7


def test_checkpoint_message_binds_every_field() -> None:
    base = checkpoint_message(1, 5, b"h" * 32, b"l" * 40, "sha256:abc")
    assert base.startswith(b"relaypush audit checkpoint v1\n")
    variants = [
        checkpoint_message(2, 5, b"h" * 32, b"l" * 40, "sha256:abc"),
        checkpoint_message(1, 6, b"h" * 32, b"l" * 40, "sha256:abc"),
        checkpoint_message(1, 5, b"g" * 32, b"l" * 40, "sha256:abc"),
        checkpoint_message(1, 5, b"h" * 32, b"m" * 40, "sha256:abc"),
        checkpoint_message(1, 5, b"h" * 32, b"l" * 40, "sha256:abd"),
    ]
    assert base not in variants


def test_keys_from_hex() -> None:
    assert KEY.public_key.key_id.startswith("sha256:")
    assert public_key_from_hex(KEY.public_key.hex) == KEY.public_key
    assert "11" not in repr(KEY)
    for bad in ("zz" * 32, "11" * 31, ""):
        with pytest.raises(AuditKeyError):
            SigningKey.from_hex(bad)
        with pytest.raises(AuditKeyError):
            public_key_from_hex(bad)
    message = b"m"
    assert KEY.public_key.verify(KEY.sign(message), message)
    assert not OTHER_KEY.public_key.verify(KEY.sign(message), message)


# -- the chainer -------------------------------------------------------------------------------


async def checkpoints(log: InMemoryEventLog) -> list[tuple[int, AuditCheckpoint]]:
    return [
        (r.position, decode_checkpoint(r.data)) async for r in log.read(AUDIT_CHECKPOINT_SUBJECT)
    ]


async def test_the_chainer_signs_checkpoints_every_n_events() -> None:
    log = InMemoryEventLog()
    await append_story(log)  # 17 events
    metrics = Registry()
    chainer = Chainer(log, KEY, every_events=5, metrics=metrics)
    await chainer.catch_up(checkpoint=False)
    found = await checkpoints(log)
    rendered = metrics.render()
    assert "relaypush_audit_chained_position 17" in rendered
    assert "relaypush_audit_covered_position 15" in rendered
    assert "relaypush_audit_checkpoints_total 3" in rendered
    # 5 events, checkpoint at 6; 4 more + that checkpoint... checkpoints are not counted
    assert [(c.covered_from, c.covered_to) for _, c in found] == [(1, 5), (6, 10), (11, 15)]
    assert [p for p, _ in found] == [18, 19, 20]
    assert chainer.covered == 15
    await chainer.catch_up()
    found = await checkpoints(log)
    assert (found[-1][1].covered_from, found[-1][1].covered_to) == (16, 20)
    for _, checkpoint in found:
        assert checkpoint.tenant_id == AUDIT_TENANT
        assert checkpoint.key_id == KEY.key_id
    report = await verify(log.read(), [KEY.public_key])
    assert report.ok, report.describe()
    assert (report.checkpoints, report.protected_upto, report.last_position) == (4, 20, 21)
    assert report.unprotected == 1  # the last checkpoint itself


async def test_nothing_to_cover_appends_nothing() -> None:
    log = InMemoryEventLog()
    chainer = Chainer(log, KEY, every_events=5)
    assert await chainer.catch_up() is None
    await append_story(log, STORY[:2])
    assert await chainer.catch_up() is not None
    assert await chainer.catch_up() is None  # only its own checkpoint is new
    assert len(await checkpoints(log)) == 1


async def test_a_restarted_chainer_resumes_from_the_last_checkpoint() -> None:
    log = InMemoryEventLog()
    await append_story(log, STORY[:9])
    await Chainer(log, KEY, every_events=4).catch_up()
    await append_story(log, STORY[9:])
    again = Chainer(log, KEY, every_events=4)
    await again.catch_up()
    found = await checkpoints(log)
    ranges = [(c.covered_from, c.covered_to) for _, c in found]
    assert ranges[0] == (1, 4)
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert (await verify(log.read(), [KEY.public_key])).ok


async def test_two_chainers_never_both_append_a_checkpoint() -> None:
    log = InMemoryEventLog()
    await append_story(log)
    first, second = Chainer(log, KEY, every_events=50), Chainer(log, KEY, every_events=50)
    await first.catch_up(checkpoint=False)
    await second.catch_up(checkpoint=False)
    assert await first.checkpoint() is not None
    assert await second.checkpoint() is None  # lost the race: expected version moved
    assert second.covered == 17
    await append_story(log, STORY[:3])
    await second.catch_up()
    await first.catch_up()
    found = await checkpoints(log)
    assert [(c.covered_from, c.covered_to) for _, c in found] == [(1, 17), (18, 21)]
    assert (await verify(log.read(), [KEY.public_key])).ok


async def test_a_forged_last_checkpoint_is_not_built_upon() -> None:
    log = InMemoryEventLog()
    await append_story(log, STORY[:5])
    forged = AuditCheckpoint(
        event_id="x",
        occurred_at=STORY[0].occurred_at,
        tenant_id=AUDIT_TENANT,
        covered_from=1,
        covered_to=5,
        head="00" * 32,
        digests=b"\0" * 40,
        key_id=KEY.key_id,
        signature="00" * 64,
    )
    await log.append(AUDIT_CHECKPOINT_SUBJECT, encode_event(forged))
    await append_story(log, STORY[5:8])
    chainer = Chainer(log, KEY, every_events=50)
    await chainer.catch_up()
    _, ours = (await checkpoints(log))[-1]
    assert (ours.covered_from, ours.covered_to) == (6, 9)
    window = ChainWindow()
    async for record in log.read(to_position=ours.covered_to):
        window.add(record.position, record.subject, record.data)
    assert ours.head == window.head.hex()  # chained from the genesis link, not the forgery
    report = await verify(log.read(), [KEY.public_key])
    assert report.broken is not None
    assert (report.broken.position, report.broken.kind) == (6, BreakKind.BAD_SIGNATURE)


async def test_the_chainer_checkpoints_after_its_seconds_and_stops() -> None:
    log = InMemoryEventLog()
    await append_story(log, STORY[:3])
    chainer = Chainer(log, KEY, every_events=1000, every_seconds=0.05, poll_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(chainer.run(stop))
    await eventually(lambda: chainer.covered == 3)
    await append_story(log, STORY[3:5])
    await eventually(lambda: chainer.covered == 6)  # the two events and the checkpoint at 4
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [(c.covered_from, c.covered_to) for _, c in await checkpoints(log)] == [(1, 3), (4, 6)]


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Yield to the loop until ``check`` holds, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_settings_make_a_chainer_only_with_a_key() -> None:
    log = InMemoryEventLog()
    assert Chainer.from_settings(log, Settings()) is None
    chainer = Chainer.from_settings(
        log, Settings(audit_signing_key="11" * 32, audit_checkpoint_interval=7)
    )
    assert chainer is not None
    with pytest.raises(ValueError):
        Chainer(log, KEY, every_events=0)
    with pytest.raises(ValueError):
        Chainer(log, KEY, every_events=50_001)


# -- verification of edited exports -----------------------------------------------------------


async def chained_export(every: int = 4) -> list[bytes]:
    """The story chained with checkpoints every ``every`` events, and 2 events after, as lines."""
    log = InMemoryEventLog()
    await append_story(log)
    await Chainer(log, KEY, every_events=every).catch_up()
    await append_story(log, STORY[:2])
    return [export_line(r) async for r in log.read()]


Line = dict[str, object]


def load(lines: list[bytes]) -> list[Line]:
    return [json.loads(line) for line in lines]


def dump(lines: list[Line]) -> list[bytes]:
    return [json.dumps(line).encode() + b"\n" for line in lines]


def renumber(lines: list[Line]) -> list[Line]:
    return [{**line, "position": i} for i, line in enumerate(lines, start=1)]


async def check(lines: list[bytes], *keys: SigningKey) -> VerifyReport:
    return await verify(read_export(lines), [k.public_key for k in keys or (KEY,)])


def broken_at(report: VerifyReport) -> tuple[int, BreakKind]:
    assert report.broken is not None, report.describe()
    return report.broken.position, report.broken.kind


async def test_an_untouched_export_verifies() -> None:
    lines = await chained_export()
    report = await check(lines)
    assert report.ok, report.describe()
    # 17 events, checkpoints at 18..22 covering 1..17 (a read stops where the log was when it
    # started: the chainer's own checkpoints are chained on its next pass), then 2 events
    assert report.protected_upto == 17
    assert report.last_position == len(lines) == 24
    assert report.unprotected == 7
    assert "not yet covered" in report.describe()


async def test_altered_bytes_are_caught_at_their_position() -> None:
    lines = load(await chained_export())
    line = lines[2]  # position 3: w2's registration
    assert isinstance(line["data"], str)
    line["data"] = line["data"].replace("device-token-w2", "device-token-evil")
    assert broken_at(await check(dump(lines))) == (3, BreakKind.ALTERED)


async def test_a_changed_subject_is_caught_at_its_position() -> None:
    lines = load(await chained_export())
    lines[5]["subject"] = ["acme", "notification", "w9", "m2", "accepted"]
    assert broken_at(await check(dump(lines))) == (6, BreakKind.ALTERED)


async def test_a_forged_event_is_caught_where_it_was_inserted() -> None:
    lines = load(await chained_export())
    forged = dict(lines[6])
    forged["data"] = str(forged["data"]).replace("ev-7", "ev-forged")
    edited = renumber([*lines[:6], forged, *lines[6:]])  # inserted at position 7
    assert broken_at(await check(dump(edited))) == (7, BreakKind.FORGED)


async def test_a_second_event_at_one_position_is_forged() -> None:
    lines = load(await chained_export())
    edited = [*lines[:7], {**lines[6], "data": "{}"}, *lines[7:]]
    assert broken_at(await check(dump(edited))) == (7, BreakKind.FORGED)


async def test_a_dropped_event_is_caught_at_its_position() -> None:
    lines = load(await chained_export())
    del lines[9]  # position 10
    assert broken_at(await check(dump(lines))) == (10, BreakKind.DROPPED)


async def test_a_dropped_and_renumbered_event_is_caught_at_its_position() -> None:
    lines = load(await chained_export())
    del lines[9]
    assert broken_at(await check(dump(renumber(lines)))) == (10, BreakKind.DROPPED)


async def test_reordered_events_are_caught() -> None:
    lines = load(await chained_export())
    swapped = [*lines[:4], lines[5], lines[4], *lines[6:]]  # positions 6 then 5
    assert broken_at(await check(dump(swapped))) == (5, BreakKind.REORDERED)
    renumbered = renumber(swapped)  # positions in order, the events swapped
    assert broken_at(await check(dump(renumbered))) == (5, BreakKind.REORDERED)


async def test_a_checkpoint_signed_with_another_key_is_caught() -> None:
    log = InMemoryEventLog()
    await append_story(log)
    await Chainer(log, KEY, every_events=10).catch_up(checkpoint=False)  # covers 1..10 at 18
    await Chainer(log, OTHER_KEY, every_events=10).catch_up()  # covers 11..18 at 19
    lines = [export_line(r) async for r in log.read()]
    assert broken_at(await check(lines)) == (19, BreakKind.BAD_SIGNATURE)
    assert (await check(lines, KEY, OTHER_KEY)).ok  # both keys known: a rotation


async def test_a_checkpoint_with_a_forged_signature_is_caught() -> None:
    lines = load(await chained_export())
    checkpoint_line = next(
        line for line in lines if line["subject"] == list(AUDIT_CHECKPOINT_SUBJECT)
    )
    checkpoint = decode_checkpoint(str(checkpoint_line["data"]).encode())
    message = checkpoint_message(
        checkpoint.covered_from,
        checkpoint.covered_to,
        bytes.fromhex(checkpoint.head),
        checkpoint.digests,
        checkpoint.key_id,
    )
    forged = msgspec.structs.replace(checkpoint, signature=OTHER_KEY.sign(message).hex())
    checkpoint_line["data"] = encode_event(forged).decode()
    position = checkpoint_line["position"]
    assert broken_at(await check(dump(lines))) == (position, BreakKind.BAD_SIGNATURE)


async def test_a_signed_checkpoint_with_a_wrong_head_is_caught() -> None:
    log = InMemoryEventLog()
    await append_story(log, STORY[:3])
    window = ChainWindow()
    async for record in log.read():
        window.add(record.position, record.subject, record.data)
    leaves = window.leaves(1, 3)
    head = bytes(32)
    bad = AuditCheckpoint(
        event_id="x",
        occurred_at=STORY[0].occurred_at,
        tenant_id=AUDIT_TENANT,
        covered_from=1,
        covered_to=3,
        head=head.hex(),
        digests=leaves,
        key_id=KEY.key_id,
        signature=KEY.sign(checkpoint_message(1, 3, head, leaves, KEY.key_id)).hex(),
    )
    await log.append(AUDIT_CHECKPOINT_SUBJECT, encode_event(bad))
    report = await verify(log.read(), [KEY.public_key])
    assert broken_at(report) == (4, BreakKind.HEAD_MISMATCH)


async def test_a_malformed_checkpoint_is_caught() -> None:
    log = InMemoryEventLog()
    await append_story(log, STORY[:3])
    await log.append(AUDIT_CHECKPOINT_SUBJECT, b'{"type":"audit.checkpoint"}')
    assert broken_at(await verify(log.read(), [KEY.public_key])) == (
        4,
        BreakKind.MALFORMED_CHECKPOINT,
    )


async def test_changes_after_the_last_checkpoint_are_not_covered() -> None:
    lines = load(await chained_export())
    lines[-1]["data"] = "{}"  # position 24: after the last checkpoint's coverage
    report = await check(dump(lines))
    assert report.ok
    assert report.protected_upto == 17
    assert report.unprotected == 7


async def test_a_truncated_tail_is_a_drop_only_when_a_later_event_remains() -> None:
    lines = load(await chained_export())
    report = await check(dump(lines[:-1]))
    assert report.ok
    assert report.last_position == 23
    assert broken_at(await check(dump([*lines[:-2], lines[-1]]))) == (23, BreakKind.DROPPED)


def test_the_verifier_ignores_what_follows_a_break() -> None:
    verifier = ChainVerifier([KEY.public_key])
    assert verifier.feed(1, ("a",), b"")
    assert verifier.feed(3, ("a",), b"")  # a gap: decided by what comes next
    assert not verifier.feed(4, ("a",), b"")
    assert not verifier.feed(5, ("a",), b"")
    report = verifier.report()
    assert broken_at(report) == (2, BreakKind.DROPPED)
    assert report.events == 1


def test_a_fresh_key_verifies_its_own_signatures() -> None:
    key = generate_signing_key()
    assert key.public_key.verify(key.sign(b"x"), b"x")
