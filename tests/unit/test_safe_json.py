"""safe_json: depth measured outside strings, in one linear scan, before Python's parser sees the text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from convprop import safe_json


@pytest.mark.parametrize("text, depth", [(b"[]", 1), (b'[[{"a": [1]}]]', 4), (b'["[[[", "]"]', 1),
                                         (b'["\\"[[[["]', 1), (b'["abc', 1), (b'[["ab\\', 2), (b"", 0)])
def test_nesting_depth_skips_strings(text, depth):
    assert safe_json.nesting_depth(text) == depth


def test_deep_duplicate_and_malformed_json_are_one_line():
    with pytest.raises(ValueError, match="body: JSON nested 200,?000 deep|nested 200000 deep"):
        safe_json.loads(b"[" * 200_000, "body")
    with pytest.raises(ValueError, match="body: key 'a' appears twice"):
        safe_json.loads(b'{"a": 1, "a": 2}', "body", unique_keys=True)
    assert safe_json.loads(b'{"a": 1, "a": 2}', "body") == {"a": 2}
    with pytest.raises(ValueError, match="body: not valid JSON"):
        safe_json.loads(b'"' + b'\\"' * 1000, "body")


def test_an_unterminated_string_of_escaped_quotes_is_scanned_in_linear_time():
    """`"\\"\\"\\"…` never closed: with a closing quote required, the scan was retried from each quote
    (quadratic: 40 kB took 17 s on a 2-core AMD EPYC; the server's 2 MiB bodies, hours). Bounded here by a
    generous wall-clock limit on a subprocess, not a timing assertion."""
    code = ("from convprop import safe_json\n"
            "try:\n    safe_json.loads(b'\"' + b'\\\\\"' * 1_000_000, 'body')\nexcept ValueError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "body: not valid JSON" in r.stdout, r.stderr
