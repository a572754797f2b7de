"""The incremental stop-string matcher against a plain search."""

from __future__ import annotations

import random
import time

from qwenvl.processing.stops import StopMatcher, prefix_function


def test_prefix_function():
    assert prefix_function("abab") == [0, 0, 1, 2]
    assert prefix_function("aabaaab") == [0, 1, 0, 1, 2, 2, 3]
    assert prefix_function("") == []


def test_matches_a_plain_search_piece_by_piece():
    rng = random.Random(1)
    for _ in range(500):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        m, fed = StopMatcher(stops), 0
        while fed < len(text):
            k = rng.randint(1, 4)
            found = m.feed(text[fed:fed + k])
            fed += k
            seen = text[:fed]
            hits = [seen.find(s) for s in stops if s in seen]
            assert found == (min(hits) if hits else None), (stops, seen)
            if found is not None:
                break
            # what may still be the start of a stop string: the longest proper prefix ending the text
            assert m.pending == max((k for s in stops for k in range(1, len(s)) if seen.endswith(s[:k])), default=0)


def test_the_earliest_start_wins_within_one_piece():
    m = StopMatcher(["bc", "abcd"])
    assert m.feed("xabcd") == 1   # "abcd" starts first, though "bc" ends first
    assert m.feed("more") == 1    # decided: later text changes nothing


def test_long_stop_strings_cost_linear_time():
    m = StopMatcher(["ab" * 500 + "c"])
    t0 = time.perf_counter()
    for _ in range(5000):   # each piece would cost O(len^2) with prefix tests
        m.feed("ab")
    assert m.match is None and m.pending == 1000
    assert time.perf_counter() - t0 < 2
    assert StopMatcher([]).feed("abc") is None and StopMatcher([""]).pending == 0
