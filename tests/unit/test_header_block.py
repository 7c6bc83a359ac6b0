"""HPACK as the providers' HTTP/2 client speaks it, checked against hpack's own coder.

These tests also pin what ``relaypush.delivery.header_block`` takes from hpack's internals (its
static table and its Huffman decoder): if a new hpack changes them, they fail here first.
"""

from __future__ import annotations

import hpack
import pytest

from relaypush.delivery.header_block import STATIC_TABLE, CompressionError, decode, encode

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":path", b"/3/device/" + b"ab" * 32),
    (b":authority", b"api.push.apple.com"),
    (b"apns-id", b"6F1C2B1E-8D3A-5E6F-9A7B-0C1D2E3F4A5B"),
    (b"apns-topic", b"com.example.wallet"),
    (b"apns-push-type", b"alert"),
    (b"apns-priority", b"10"),
    (b"authorization", b"bearer " + b"x" * 300),
]


def test_the_static_table_is_rfc_7541s() -> None:
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE[0] == (b":authority", b"")
    assert STATIC_TABLE[2] == (b":method", b"POST")
    assert STATIC_TABLE[6] == (b":scheme", b"https")
    assert STATIC_TABLE[7] == (b":status", b"200")
    assert STATIC_TABLE[22] == (b"authorization", b"")
    assert STATIC_TABLE[60] == (b"www-authenticate", b"")


def test_hpack_decodes_what_we_encode_and_nothing_is_indexed() -> None:
    decoder = hpack.Decoder()
    block = encode(REQUEST)
    assert decoder.decode(block, raw=True) == REQUEST
    assert decoder.decode(block, raw=True) == REQUEST  # no state carried from the first
    assert len(decoder.header_table.dynamic_entries) == 0


def test_fields_are_literals_and_authorization_is_never_indexed() -> None:
    block = encode([(b":method", b"POST"), (b"authorization", b"secret")])
    assert block[0] == 0x83  # the whole static entry 3
    assert block[1:] == b"\x1f\x08\x06secret"  # never indexed, name 23, 6 plain bytes
    assert encode([(b"apns-id", b"1")]) == b"\x00\x07apns-id\x011"  # a new name, no Huffman


def test_we_decode_what_hpack_encodes_with_huffman_coding() -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 0  # what our SETTINGS_HEADER_TABLE_SIZE of 0 asks a server
    answer = [
        (b":status", b"410"),
        (b"apns-id", b"6F1C2B1E-8D3A-5E6F-9A7B-0C1D2E3F4A5B"),
        (b"content-type", b"application/json"),
        (b"retry-after", b"120"),
    ]
    for _ in range(2):  # twice: the second block must not lean on the first
        fields = decode(encoder.encode(answer, huffman=True))
        assert fields.status == 410
        for name, value in answer:
            assert fields.get(name) == value
    assert fields.get(b"absent") is None
    assert decode(b"\x88").status == 200  # indexed ":status: 200"


def test_a_reference_into_the_dynamic_table_is_a_compression_error() -> None:
    encoder = hpack.Encoder()  # a server that ignored our table size of 0
    encoder.encode([(b"apns-id", b"one")])
    reused = encoder.encode([(b"apns-id", b"one")])
    with pytest.raises(CompressionError):
        decode(reused)


@pytest.mark.parametrize(
    "block",
    [
        b"\x3f\xe1\x1f",  # a dynamic table size update above 0
        b"\x00\x07apns",  # a name cut short
        b"\x00\x81\xff",  # a Huffman string that is not one (EOS padding wrong)
        b"\x80",  # index 0
        b"\xff\xff\xff\xff\xff\xff\x7f",  # an integer too large
    ],
)
def test_malformed_blocks_are_compression_errors(block: bytes) -> None:
    def decode_all() -> None:
        fields = decode(block)
        for name in fields.names():
            fields.get(name)

    with pytest.raises(CompressionError):
        decode_all()
