# A Python workload for the LD_PRELOAD test: dicts, lists, strings, sets and
# tuples of many sizes, grown and dropped in waves so freed memory is reused.
# Prints a digest of everything it built; the output must not depend on the
# allocator.
import hashlib
import random

rng = random.Random(12345)
h = hashlib.sha256()

for wave in range(6):
    table = {}
    for i in range(40000):
        key = "k%d-%s" % (i, "x" * rng.randrange(0, 64))
        table[key] = [rng.random() for _ in range(rng.randrange(0, 12))]
    words = sorted(table)[::7]
    text = " ".join(words)
    chunks = [text[i:i + rng.randrange(1, 5000)] for i in range(0, len(text), 997)]
    big = "".join(reversed(chunks)).upper()
    counts = {}
    for w in big.split():
        counts[w[:3]] = counts.get(w[:3], 0) + 1
    nested = [(i, str(i) * (i % 50), {i: [i] * (i % 20)}) for i in range(20000)]
    uniq = sorted(set(x[1] for x in nested))
    h.update(repr(sorted(counts.items())).encode())
    h.update(big[:100000].encode())
    h.update(repr(uniq[:500]).encode())
    h.update(repr(sum(len(v) for v in table.values())).encode())
    del table, words, text, chunks, big, counts, nested, uniq

print("python workload", h.hexdigest())
