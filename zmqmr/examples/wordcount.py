"""Word count, the built-in job: a word is a maximal run of Unicode letters, case kept.

zmqmr-local --input books/ --output counts/      (no --job needed)

`mapper` is the definition, one line at a time. `map_split` gives the same counts
faster: it sees a split's lines at once, counts them in C where the text is ASCII
(bytes.translate and split), and uses the regex only on lines that are not.
"""

import re
from itertools import islice

try:
    from _collections import _count_elements  # Counter's own loop, in C
except ImportError:  # not CPython
    def _count_elements(counts, words):
        for word in words:
            counts[word] = counts.get(word, 0) + 1

WORD = re.compile(r"[^\W\d_]+")
# ASCII letters stay, every other byte becomes a space: for ASCII text, split() then
# gives exactly the regex's words, since no ASCII byte but A-Z and a-z is a letter.
_LETTERS_ONLY = bytes(c if 65 <= c <= 90 or 97 <= c <= 122 else 32 for c in range(256))
LINES_PER_BATCH = 16384


def mapper(path, line):
    for word in WORD.findall(line):
        yield word, 1


class WordCounts:
    """Counts of words, exactly as WORD defines them, added a batch of lines at a time."""

    def __init__(self):
        self.ascii = {}  # bytes -> count, from the fast path
        self.other = {}  # str -> count, from the regex

    def add_lines(self, lines):
        text = "\n".join(lines)
        if text.isascii():
            _count_elements(self.ascii, text.encode("ascii").translate(_LETTERS_ONLY).split())
            return
        plain = [line for line in lines if line.isascii()]
        if plain:
            _count_elements(self.ascii, "\n".join(plain).encode("ascii").translate(_LETTERS_ONLY).split())
        _count_elements(self.other, WORD.findall("\n".join(line for line in lines if not line.isascii())))

    def add_text(self, text):
        self.add_lines(text.split("\n"))

    def items(self):
        """(word, count) pairs, each word once."""
        counts = dict(zip(map(bytes.decode, self.ascii), self.ascii.values()))
        for word, n in self.other.items():
            counts[word] = counts.get(word, 0) + n
        return counts.items()


def map_split(path, lines):
    counts = WordCounts()
    lines = iter(lines)
    while True:
        batch = list(islice(lines, LINES_PER_BATCH))
        if not batch:
            return counts.items()
        counts.add_lines(batch)


def combiner(word, counts):
    yield word, sum(counts)


reducer = combiner
