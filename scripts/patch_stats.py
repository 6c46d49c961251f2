#!/usr/bin/env python3
"""Line counts of the llama.cpp changes: hooks into llama.cpp's own files vs the project's new files.

From the sources (default): each patch of patches/series, with the lines it adds and removes in llama.cpp's own
files (the hooks) and in files the project adds (created by a patch, or kept in llama_cpp_ext/ and copied into the
tree by scripts/fetch_llama_cpp.py), then the totals and the lines of llama_cpp_ext/.

With ``--tree PATCHED --pristine PRISTINE`` (e.g. build/llama.cpp-src and build/llama.cpp-pristine): the net result,
lines added / removed in each of llama.cpp's own files and lines of each new file, whatever series produced it.

``--json`` prints the numbers as one JSON object. Exit status 0, 1 when a path does not exist.
"""

from __future__ import annotations

import argparse
import difflib
import json
import pathlib
import re
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import fetch_llama_cpp  # noqa: E402  (a script next to this one)


def parse_patch(text: str) -> dict[str, dict]:
    """Per file of a unified diff: {"added": n, "removed": n, "created": bool} (created: the old side is /dev/null)."""
    files: dict[str, dict] = {}
    old_path, current = None, None
    remaining_old = remaining_new = 0
    for line in text.splitlines():
        if remaining_old or remaining_new:  # inside a hunk
            if line.startswith("+"):
                current["added"] += 1
                remaining_new -= 1
            elif line.startswith("-"):
                current["removed"] += 1
                remaining_old -= 1
            elif not line.startswith("\\"):
                remaining_old -= 1
                remaining_new -= 1
            continue
        if line.startswith("--- "):
            old_path = line[4:].split("\t")[0]
        elif line.startswith("+++ ") and old_path is not None:
            path = line[4:].split("\t")[0]
            path = path[2:] if path.startswith("b/") else path
            current = files.setdefault(path, {"added": 0, "removed": 0, "created": False})
            current["created"] |= old_path == "/dev/null"
            old_path = None
        elif line.startswith("@@ ") and current is not None:
            match = re.match(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", line)
            remaining_old = int(match.group(1) or 1)
            remaining_new = int(match.group(2) or 1)
    return files


def count_lines(path: pathlib.Path) -> int:
    return len(path.read_text(errors="replace").splitlines())


def series_stats(series: pathlib.Path, new_files_root: pathlib.Path | None) -> dict:
    patches = fetch_llama_cpp.read_series(series)
    parsed = {patch.name: parse_patch(patch.read_text()) for patch in patches}
    kept = {p.as_posix() for p in fetch_llama_cpp.new_files(new_files_root)}
    created = {path for files in parsed.values() for path, f in files.items() if f["created"]}
    new = kept | created
    out = {"patches": [], "new_files": {}}
    for name, files in parsed.items():
        row = {"patch": name, "own_added": 0, "own_removed": 0, "new_added": 0, "new_removed": 0,
               "own_files": sorted(p for p in files if p not in new)}
        for path, f in files.items():
            side = "new" if path in new else "own"
            row[f"{side}_added"] += f["added"]
            row[f"{side}_removed"] += f["removed"]
        out["patches"].append(row)
    for relative in sorted(kept):
        out["new_files"][relative] = count_lines(new_files_root / relative)
    for key in ("own_added", "own_removed", "new_added", "new_removed"):
        out[key] = sum(row[key] for row in out["patches"])
    out["patch_lines"] = sum(count_lines(p) for p in patches)
    out["new_file_lines"] = sum(out["new_files"].values())
    return out


def tree_stats(tree: pathlib.Path, pristine: pathlib.Path) -> dict:
    ignore = {fetch_llama_cpp.STAMP_NAME}
    ours = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file() and p.name not in ignore}
    theirs = {p.relative_to(pristine).as_posix() for p in pristine.rglob("*") if p.is_file() and p.name not in ignore}
    out = {"own_files": {}, "new_files": {}, "removed_files": sorted(theirs - ours)}
    for relative in sorted(ours & theirs):
        a, b = (pristine / relative).read_bytes(), (tree / relative).read_bytes()
        if a == b:
            continue
        diff = difflib.unified_diff(a.decode(errors="replace").splitlines(), b.decode(errors="replace").splitlines(),
                                    lineterm="", n=0)
        lines = [ln for ln in diff if not ln.startswith(("---", "+++", "@@"))]
        out["own_files"][relative] = {"added": sum(ln.startswith("+") for ln in lines),
                                      "removed": sum(ln.startswith("-") for ln in lines)}
    for relative in sorted(ours - theirs):
        out["new_files"][relative] = count_lines(tree / relative)
    out["own_added"] = sum(f["added"] for f in out["own_files"].values())
    out["own_removed"] = sum(f["removed"] for f in out["own_files"].values())
    out["new_file_lines"] = sum(out["new_files"].values())
    return out


def print_series(stats: dict) -> None:
    print(f"{'patch':40s} {'hooks +':>8s} {'hooks -':>8s} {'new +':>7s} {'new -':>7s}  llama.cpp files")
    for row in stats["patches"]:
        print(f"{row['patch']:40s} {row['own_added']:8d} {row['own_removed']:8d} {row['new_added']:7d} "
              f"{row['new_removed']:7d}  {' '.join(row['own_files'])}")
    print(f"{'total':40s} {stats['own_added']:8d} {stats['own_removed']:8d} {stats['new_added']:7d} "
          f"{stats['new_removed']:7d}  ({stats['patch_lines']} lines of patches)")
    for path, n in stats["new_files"].items():
        print(f"new file {path}: {n} lines")
    if stats["new_files"]:
        print(f"new files: {stats['new_file_lines']} lines")


def print_tree(stats: dict) -> None:
    for path, f in stats["own_files"].items():
        print(f"llama.cpp file {path}: +{f['added']} -{f['removed']}")
    for path, n in stats["new_files"].items():
        print(f"new file {path}: {n} lines")
    print(f"hooks in llama.cpp's own files: +{stats['own_added']} -{stats['own_removed']} lines in "
          f"{len(stats['own_files'])} files; new files: {stats['new_file_lines']} lines in {len(stats['new_files'])} files")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=pathlib.Path, default=fetch_llama_cpp.PATCH_DIR,
                        help="folder holding the series file and the patches (default patches/)")
    parser.add_argument("--new-files", type=pathlib.Path, default=fetch_llama_cpp.NEW_FILES_DIR,
                        help="folder of new files copied into the tree (default llama_cpp_ext/)")
    parser.add_argument("--tree", type=pathlib.Path, help="a patched llama.cpp tree: report its net changes")
    parser.add_argument("--pristine", type=pathlib.Path, default=fetch_llama_cpp.DEFAULT_PRISTINE_DEST,
                        help="the unpatched tree to compare --tree with (default build/llama.cpp-pristine)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.tree is not None:
        for path in (args.tree, args.pristine):
            if not path.is_dir():
                print(f"patch_stats: error: {path} is not a directory", file=sys.stderr)
                return 1
        stats = tree_stats(args.tree, args.pristine)
        print(json.dumps(stats, indent=1)) if args.json else print_tree(stats)
        return 0
    series = args.patches / "series"
    if not series.is_file():
        print(f"patch_stats: error: {series} does not exist", file=sys.stderr)
        return 1
    try:
        stats = series_stats(series, args.new_files if args.new_files.is_dir() else None)
    except fetch_llama_cpp.FetchError as exc:
        print(f"patch_stats: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=1)) if args.json else print_series(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
