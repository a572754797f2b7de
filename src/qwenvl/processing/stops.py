"""Stop strings found in a text that grows piece by piece, in time linear in the text.

A generation's text is checked after every token. Searching the whole text for every stop string each
time, and testing every prefix of every stop string against its end, costs O(text x stops) and
O(len(stop)^2) per token: one 200k-character stop string froze a server's batch. Here each stop string
has a Knuth-Morris-Pratt automaton whose state (the longest prefix of the stop string that ends the text
so far) is carried from piece to piece, so each new character costs amortized O(1) per stop string, and
that state is also the length of text to hold back while a stop string may still be starting.
"""

from __future__ import annotations


def prefix_function(s: str) -> list[int]:
    """pi[i]: the length of the longest proper prefix of s[:i + 1] that is also its suffix."""
    pi = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = pi[k - 1]
        if s[i] == s[k]:
            k += 1
        pi[i] = k
    return pi


class StopMatcher:
    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = [s for s in stops if s]
        self.pi = [prefix_function(s) for s in self.stops]
        self.state = [0] * len(self.stops)
        self.fed = 0                     # characters fed so far
        self.match: int | None = None    # where the earliest stop string starts, once one is complete

    def feed(self, text: str) -> int | None:
        """Add the next piece of text; returns the start of the earliest complete stop string (None: none yet)."""
        if self.match is not None or not text:
            return self.match
        best = None
        for k, s in enumerate(self.stops):
            q, pi, n = self.state[k], self.pi[k], len(s)
            for j, c in enumerate(text):
                while q and s[q] != c:
                    q = pi[q - 1]
                if s[q] == c:
                    q += 1
                if q == n:   # the first occurrence of this one: it starts n - 1 characters back
                    start = self.fed + j + 1 - n
                    best = start if best is None else min(best, start)
                    break
            self.state[k] = q
        self.fed += len(text)
        self.match = best
        return best

    @property
    def pending(self) -> int:
        """How many characters at the end of the text may be the start of a stop string."""
        return max(self.state, default=0)
