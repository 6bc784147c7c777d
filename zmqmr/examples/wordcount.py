"""Word count, the built-in job: a word is a maximal run of Unicode letters, case kept.

zmqmr-local --input books/ --output counts/      (no --job needed)
"""

import re

WORD = re.compile(r"[^\W\d_]+")


def mapper(path, line):
    for word in WORD.findall(line):
        yield word, 1


def combiner(word, counts):
    yield word, sum(counts)


reducer = combiner
