"""Inverted index: for each word (lower-cased), the sorted list of input files it occurs in.

zmqmr-local --job zmqmr.examples.inverted_index --input docs/ --output index/
Output lines look like: whale<TAB>["books/moby.txt", "books/jonah.txt"]
"""

import re

WORD = re.compile(r"[^\W\d_]+")


def mapper(path, line):
    for word in set(WORD.findall(line.lower())):
        yield word, path


def combiner(word, paths):
    for path in sorted(set(paths)):
        yield word, path


def reducer(word, paths):
    yield word, sorted(set(paths))
