"""Counts the lines, words and bytes of every file in a directory tree.

Usage: report.py INPUT_DIR

Writes, under /out:
  summary.json              per directory (relative to INPUT_DIR, "." for
                            itself): files, lines, words, bytes; the totals;
                            the five most common words
  by-dir/<dir>/counts.txt   one per directory of the input, in a tree that
                            mirrors it: a line per file, then the directory's total
and prints a short summary on stdout. Lines and words are counted as wc(1)
counts them (newlines; runs of non-space); the common words are runs of
letters, lower-cased.
"""
import collections
import json
import os
import re
import sys

OUT = "/out"
WORD = re.compile(r"[^\W\d_]+")


def count(data):
    return {"lines": data.count(b"\n"), "words": len(data.split()), "bytes": len(data)}


def add(total, counts):
    for key, value in counts.items():
        total[key] = total.get(key, 0) + value


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: report.py INPUT_DIR")
    root = sys.argv[1]
    directories = {}
    common = collections.Counter()
    total = {"files": 0, "lines": 0, "words": 0, "bytes": 0}
    for path, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(path, root)
        mine = {"files": 0, "lines": 0, "words": 0, "bytes": 0}
        rows = []
        for name in sorted(files):
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
            counts = count(data)
            rows.append(f"{name} lines={counts['lines']} words={counts['words']} bytes={counts['bytes']}")
            add(mine, counts)
            mine["files"] += 1
            common.update(w.lower() for w in WORD.findall(data.decode("utf-8", "replace")))
        directories[rel] = mine
        add(total, mine)
        out_dir = os.path.normpath(os.path.join(OUT, "by-dir", rel))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "counts.txt"), "w") as f:
            f.writelines(row + "\n" for row in rows)
            f.write(f"total files={mine['files']} lines={mine['lines']} words={mine['words']} "
                    f"bytes={mine['bytes']}\n")
    top = sorted(common.items(), key=lambda item: (-item[1], item[0]))[:5]
    summary = {"input": root, "directories": directories, "total": total, "top_words": top}
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{total['files']} files in {len(directories)} directories: "
          f"{total['lines']} lines, {total['words']} words, {total['bytes']} bytes")
    print("most common words: " + ", ".join(f"{word} ({n})" for word, n in top))
    print(f"wrote {OUT}/summary.json and {len(directories)} counts.txt under {OUT}/by-dir")


if __name__ == "__main__":
    main()
