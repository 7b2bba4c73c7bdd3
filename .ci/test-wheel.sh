#!/usr/bin/env bash
# Test a built wheel as a user without Rust gets it: install it into a fresh virtual
# environment whose PATH has no cargo or rustc, then run `fp8fast demo` and the whole pytest
# suite from a copy of tests/ outside the source tree, so nothing can be imported from it.
#
# usage: test-wheel.sh PYTHON WHEEL [CONSTRAINTS]
#   PYTHON       the interpreter to make the venv with (a path, or a command such as "py -3.13")
#   WHEEL        the wheel file
#   CONSTRAINTS  optional pip constraints file (CI's lowest-dependency run pins numpy etc.)
# Used by .ci/run and by .github/workflows/release.yml on every platform (Linux, macOS,
# Windows under Git Bash, Alpine).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 PYTHON WHEEL [CONSTRAINTS]" >&2
    exit 2
fi
read -ra python <<<"$1"
wheel="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
constraints=()
if [ $# -eq 3 ]; then
    constraints=(-c "$(cd "$(dirname "$3")" && pwd)/$(basename "$3")")
fi
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/fp8fast-wheel-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT

"${python[@]}" -m venv "$work/venv"
if [ -d "$work/venv/Scripts" ]; then bin="$work/venv/Scripts"; else bin="$work/venv/bin"; fi

# PATH: the venv first, then every directory of the current PATH that holds no cargo or rustc.
path="$bin"
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
    if [ -z "$d" ] || [ -e "$d/cargo" ] || [ -e "$d/rustc" ] || [ -e "$d/cargo.exe" ] || [ -e "$d/rustc.exe" ]; then
        continue
    fi
    path="$path:$d"
done
export PATH="$path"
if command -v cargo >/dev/null || command -v rustc >/dev/null; then
    echo "test-wheel: a Rust toolchain is still on PATH: $(command -v cargo rustc)" >&2
    exit 1
fi
echo "test-wheel: no cargo or rustc on PATH (command -v cargo fails)"

python -m pip install --quiet --upgrade ${constraints[@]+"${constraints[@]}"} "$wheel[test]"
python -m pip list

# The demo through the installed console script.
fp8fast --version
fp8fast demo

# The suite, with the project's pytest configuration, from a folder that has no package source.
mkdir "$work/suite"
cp "$src/pyproject.toml" "$work/suite/"
cp -R "$src/tests" "$work/suite/tests"
rm -rf "$work/suite/tests/fuzz"
cd "$work/suite"
installed="$(python - <<'EOF'
import os, sysconfig
import fp8fast
site = os.path.realpath(sysconfig.get_paths()["purelib"])
here = os.path.realpath(os.path.dirname(fp8fast.__file__))
assert here == os.path.join(site, "fp8fast"), f"fp8fast imported from {here}, not from the venv's {site}"
print(here)
EOF
)"
echo "test-wheel: fp8fast imported from $installed"
status=0
python -m pytest -p no:cacheprovider tests 2>&1 | tee "$work/pytest.log" || status=$?
if [ "$status" -ne 0 ]; then
    # Includes 5, "no tests were collected".
    echo "test-wheel: pytest failed with exit code $status" >&2
    exit 1
fi
# conftest.py prints where the suite imported fp8fast from: it must be the wheel's install.
grep -E "^fp8fast [^ ]+ imported from " "$work/pytest.log" | grep -F " imported from $installed" >/dev/null || {
    echo "test-wheel: pytest did not import fp8fast from $installed" >&2
    exit 1
}
summary="$(tail -n 1 "$work/pytest.log")"
case "$summary" in
*" passed"*) echo "test-wheel: $("${python[@]}" --version 2>&1), $(basename "$wheel"): $summary" ;;
*) echo "test-wheel: no test passed: $summary" >&2; exit 1 ;;
esac
