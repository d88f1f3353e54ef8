#!/usr/bin/python3
"""Fails if a file of the repository reads or names something outside the repository.

The repository must work from a clone anywhere: the tests read their data from tests/data and
the docs link only to the repository's own pages. This scans every file git knows (tracked, and
untracked ones that are not ignored, so a file not yet added is caught too; without git: every
file under the root but build directories) and reports, with file and line:

  * the sibling directory `shared` of the development machine, which held the contract and
    the data (named as a relative path, or by its `data` directory or its two Markdown files);
  * a relative path of `../` steps that, taken from the file's own directory, leaves the
    repository;
  * an absolute path into the development machine's work area (the top directory `work`);
  * an absolute path of a data file (`*.f64`, `*.i64`, `*.manifest.json`) outside /tmp.

Usage: check_self_contained.py [--root DIR] [--self-test]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

# Written so that this file does not name what it looks for.
SHARED_DIR = re.compile(r"\.\.[/\\]+shared\b")
SHARED_FILES = re.compile(r"\bshared[/\\]+(?:data\b|DESIGN\.md|STYLE\.md)")
# A run of ../ steps, possibly ending in a bare .. ("${DIR}/../.."); a lone ".." is no path.
RELATIVE_UP = re.compile(r"(?<![\w.])((?:\.\.[/\\])+(?:\.\.(?![\w.]))?)")
WORK_AREA = re.compile(r"(?<![\w.~-])/" + "work" + "/")
ABSOLUTE_DATA = re.compile(r"(?<![\w.~$}-])(/(?:[\w.+-]+/)*[\w.+-]+\.(?:f64|i64|manifest\.json))\b")
SKIP_DIRS = {".git", "rcknn-data", "node_modules", "__pycache__"}


def list_files(root):
    """Paths relative to root of the files to check."""
    if os.path.isdir(os.path.join(root, ".git")) or os.path.isfile(os.path.join(root, ".git")):
        out = subprocess.run(
            ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True, capture_output=True).stdout
        return sorted({p for p in out.decode().split("\0") if p})
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.startswith("build")]
        for name in names:
            files.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(files)


def read_text(path):
    """The file's text, or None for a binary or missing file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError):
        return None  # deleted in the work tree but still in the index
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def escapes(root, rel_file, up_steps):
    """True if `up_steps` (a run of ../) taken from rel_file's directory leaves root."""
    depth = rel_file.replace("\\", "/").count("/")
    return up_steps.count("..") > depth


def check_text(root, rel_file, text):
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{rel_file}:{number}"
        if SHARED_DIR.search(line) or SHARED_FILES.search(line):
            problems.append(f"{where}: names the development machine's shared directory: {line.strip()}")
            continue
        for match in RELATIVE_UP.finditer(line):
            if escapes(root, rel_file, match.group(1)):
                problems.append(f"{where}: relative path leaves the repository: {line.strip()}")
                break
        if WORK_AREA.search(line):
            problems.append(f"{where}: absolute path into /work: {line.strip()}")
        for match in ABSOLUTE_DATA.finditer(line):
            if not match.group(1).startswith("/tmp/"):
                problems.append(f"{where}: data file outside the repository: {match.group(1)}")
    return problems


def check(root):
    problems = []
    files = list_files(root)
    for rel in files:
        text = read_text(os.path.join(root, rel))
        if text is not None:
            problems.extend(check_text(root, rel, text))
    return files, problems


def self_test():
    """Each doctored tree must be rejected for its defect; the clean tree must pass."""
    clean = {
        "README.md": "Data in tests/data/gold.points.f64; see docs/design.md.\n",
        "tests/fuzz/CMakeLists.txt": 'get_filename_component(R "${CMAKE_CURRENT_SOURCE_DIR}/../.." ABSOLUTE)\n',
        "tests/e2e/t.py": 'open(os.path.join(here, "../data/small.points.f64"))\nout = "/tmp/x.f64"\n',
        "docs/a.md": "`rcknn-bench --snapshot_dir=/tmp/snap`; `--data_dir=/var/lib/rcknn`\n",
    }
    up = "." + "./"
    shared = up + "shared"
    doctored = {
        "sibling dir": ("tests/e2e/t.py", f'DATA = "{shared}/data"\n'),
        "sibling dir in docs": ("README.md", f"The contract is {shared}/DESIGN.md.\n"),
        "shared files": ("docs/a.md", "copied from shared/" + "data/gold.points.f64\n"),
        "escaping path": ("tests/e2e/t.py", f'p = "{up * 3}data/gold.points.f64"\n'),
        "escaping cmake": ("tests/fuzz/CMakeLists.txt", f'set(D "${{CMAKE_CURRENT_SOURCE_DIR}}/{up * 3}x")\n'),
        "work area": ("tests/bench/b.cc", 'const char* kDir = "/wo' + 'rk/main/tests/data";\n'),
        "absolute data": ("deploy/x.sh", "rcknn upload --input=/data/sets/gold.points" + ".f64\n"),
    }
    failures = 0
    for use_git in (True, False):
        cases = [("clean", None)] + list(doctored.items())
        for name, change in cases:
            with tempfile.TemporaryDirectory() as root:
                files = dict(clean)
                if change is not None:
                    path, text = change
                    files[path] = files.get(path, "") + text
                for path, text in files.items():
                    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
                    with open(os.path.join(root, path), "w") as f:
                        f.write(text)
                if use_git:
                    subprocess.run(["git", "-C", root, "init", "-q"], check=True)
                    # Half the files tracked, half untracked: both kinds are checked.
                    tracked = sorted(files)[::2]
                    subprocess.run(["git", "-C", root, "add", "--"] + tracked, check=True)
                listed, problems = check(root)
                if sorted(listed) != sorted(files):
                    print(f"FAIL ({'git' if use_git else 'walk'}) {name}: listed {listed}")
                    failures += 1
                ok = not problems if change is None else bool(problems)
                print(f"{'ok  ' if ok else 'FAIL'} ({'git' if use_git else 'walk'}) {name}: "
                      f"{problems if problems else 'no problem found'}")
                failures += 0 if ok else 1
    return failures == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        return 0 if self_test() else 1
    root = os.path.realpath(args.root)
    files, problems = check(root)
    if not files:
        print(f"no files found under {root}")
        return 1
    for problem in problems:
        print(problem)
    print(f"{len(files)} files checked under {root}: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
