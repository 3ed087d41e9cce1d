"""Pure-Python work for CPython on WASI: recursion, a dict, and JSON.

Deterministic (no hashing of str keys leaks into the output: only sorted or
summed results are printed), so runs under mvm and wasmtime print the same.
Usage: pybench.py [SCALE]  (default 1; the work grows linearly with it)
"""
import json
import sys


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def dict_work(n):
    counts = {}
    x = 12345
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        key = "k%d" % (x % 50021)
        counts[key] = counts.get(key, 0) + 1
    return len(counts), sum(v * v for v in counts.values()), max(counts.items(), key=lambda kv: (kv[1], kv[0]))


def json_work(rounds):
    doc = {"items": [{"id": i, "name": "item-%d" % i, "tags": ["a", "b", str(i % 7)], "price": i * 0.25,
                      "nested": {"ok": i % 2 == 0, "n": None}} for i in range(2000)]}
    total = 0
    for _ in range(rounds):
        text = json.dumps(doc, sort_keys=True)
        doc = json.loads(text)
        doc["items"][0]["id"] += 1
        total += len(text)
    return total, doc["items"][0]["id"]


def main():
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    print("fib", sum(fib(22) for _ in range(scale)))
    print("dict", *dict_work(200000 * scale))
    print("json", *json_work(20 * scale))


main()
