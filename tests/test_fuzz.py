"""A short run of the mutation fuzzer (tests/fuzz/fuzz_datum.py) in the normal tests.

The long run is ``python -m tests.fuzz.fuzz_datum --seconds N`` (see the README).
"""
from tests.fuzz.fuzz_datum import check_datum, fuzz


def test_fuzz_datum_parser_and_mean_reader_agree_with_protobuf():
    tried, failures = fuzz(seconds=10, seed=20261129, log=lambda *a: None)
    assert tried > 1000
    assert not failures, failures


def test_fuzz_check_catches_a_disagreement():
    # The checker itself must see a difference: field number 0 at the top level is
    # refused by both (agreement), a valid Datum is accepted by both.
    assert check_datum(b"\x00\x03") is None
    assert check_datum(b"\x08\x01\x10\x02\x18\x03\x28\x07") is None
