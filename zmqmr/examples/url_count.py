"""URL count: how often each http(s) URL occurs in the input, e.g. in web server logs.

zmqmr-local --job zmqmr.examples.url_count --input access.log --output urls/
"""

import re

URL = re.compile(r"https?://[^\s\"'<>]+")
TRAILING = ".,;:!?)]}"


def mapper(path, line):
    for url in URL.findall(line):
        yield url.rstrip(TRAILING), 1


def combiner(url, counts):
    yield url, sum(counts)


reducer = combiner
