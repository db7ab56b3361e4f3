"""A short run of the mutation fuzzer (tests/fuzz/fuzz_datum.py) in the normal tests.

The long run is ``python -m tests.fuzz.fuzz_datum --seconds N`` (see the README).
"""
from fuzz.fuzz_datum import check_datum, check_mean, fuzz  # tests/ is on sys.path (the conftest folder)


def test_fuzz_datum_parser_and_mean_reader_agree_with_protobuf():
    tried, failures = fuzz(seconds=10, seed=20261129, log=lambda *a: None)
    assert tried > 1000
    assert not failures, failures


def test_fuzz_check_catches_a_disagreement():
    # The checker itself must see a difference: field number 0 at the top level is
    # refused by both (agreement), a valid Datum is accepted by both.
    assert check_datum(b"\x00\x03") is None
    assert check_datum(b"\x08\x01\x10\x02\x18\x03\x28\x07") is None


# Mean files the fuzzer found the direct mean reader accepting while protobuf refuses them:
# packed diff/double_diff runs of a broken length (a 150 s run, seed 11), a 10-byte tag (the
# 10 s run in CI) and a 10-byte length prefix (a 90 s run, seed 23).
FUZZ_FINDS = [
    "0801320318022018022002",
    "0801320118",
    "3a060a040103020242600000000000000000000000000000f03f00000000000000400000000000000840"
    "0000000000001040000000000000144000000000000018400000000000001c40000000000000204000"
    "0000000000224000000000000024400000000000002632320392a140",
    "08011003988080808080808080400220022a3000000000abaaaa3eabaa2a3f0000803fabaaaa3f5555d53f00000040"
    "55551540abaa2a400000404055555540abaa6a40",
    "08011001180320012a0c00000000abaaaa59e9013eabaa5b8080808080808080801a",
]


def test_fuzz_finds_stay_fixed(tmp_path):
    for blob in FUZZ_FINDS:
        assert check_mean(bytes.fromhex(blob), str(tmp_path / "m.binaryproto")) is None
