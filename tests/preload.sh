#!/usr/bin/env bash
# Real programs under LD_PRELOAD=build/libhakmem.so: the same output and the
# same stderr as without the preload, and the preloaded run's JSON stats
# (HAKMEM_STATS=json, HAKMEM_STATS_FILE) show pages_activated > 0, i.e.
# hakmem really served the program's mallocs.
# postgres: initdb, the server and psql all under the preload (as user
# postgres: the server refuses root), one cluster per run.
# Usage: tests/preload.sh python|perl|git|gcc|sort|postgres
# Prints "FAIL: why" / "SKIP: why" on stderr and exits 1 / 77 like the C tests.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
lib=$repo/build/libhakmem.so
name=${1:?usage: preload.sh python|perl|git|gcc|sort|postgres}
base=${HAK_TEST_BIN:-$repo/build/tests}

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }
need() { command -v "$1" >/dev/null || skip "$1 is not installed"; }

# Each case writes the program's result to the file named by $1.
case_python() { python3 "$repo/tests/workload.py" >"$1"; }
case_perl() { perl "$repo/tests/workload.pl" >"$1"; }
# A fixed revision: others may commit to this tree while the test runs.
case_git() { git -C "$repo" --no-pager log --no-color -p --stat -n 300 "$rev" >"$1"; }
case_gcc() { (cd "$work/tree" && gcc -O2 -g -Iuapi -Isrc -Ikmem -c "$src" -o "$1"); }
case_sort() { LC_ALL=C sort "$work/input" >"$1"; }
case_postgres() {
  local data=$pgroot/$(basename "$1" .out)
  as_postgres "$pgbin/initdb" -D "$data" -A trust -U postgres --no-sync >"$data.log" 2>&1 &&
    as_postgres "$pgbin/pg_ctl" -D "$data" -l "$data.server.log" -w start \
      -o "-k $pgroot -c listen_addresses= -c fsync=off -p 54329" >>"$data.log" 2>&1 || return 1
  psql -h "$pgroot" -p 54329 -U postgres -X -A -q -f "$repo/tests/workload.sql" postgres >"$1"
  local rc=$?
  as_postgres "$pgbin/pg_ctl" -D "$data" -m fast -w stop >>"$data.log" 2>&1 || rc=1
  return $rc
}
as_postgres() { runuser -u postgres -- env ${LD_PRELOAD:+LD_PRELOAD=$LD_PRELOAD} "$@"; }

prepare() {
  case $name in
  python) need python3 ;;
  perl) need perl ;;
  git)
    need git
    rev=$(git -C "$repo" rev-parse HEAD) || fail "$repo is not a git checkout"
    ;;
  gcc)
    need gcc
    # A snapshot, so edits to the tree between the two runs do not matter.
    mkdir -p "$work/tree"
    cp -r "$repo/uapi" "$repo/src" "$repo/kmem" "$repo/tests" "$work/tree/"
    # The biggest allocator source; a test source before src/ has any.
    src=$(cd "$work/tree" && ls -S src/*.c kmem/*.c 2>/dev/null | head -n 1)
    [ -n "$src" ] || src=tests/stress_mt.c
    ;;
  sort)
    need sort
    # 1M lines from a Park-Miller generator: exact in awk's doubles.
    awk 'BEGIN { x = 1; for (i = 0; i < 1000000; i++) {
           x = (x * 16807) % 2147483647; printf "%d %x line %d\n", x % 100000, x, i } }' \
      >"$work/input" || fail "could not generate the input"
    ;;
  postgres)
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -x "$pgbin/postgres" ] || skip "postgresql is not installed"
    need psql
    [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1 || skip "needs root and the user postgres"
    pgroot=$(mktemp -d /tmp/hakmem-pg.XXXXXX) || fail "mktemp failed"
    # The server logs go to the kept work directory when the test fails.
    trap 'for d in "$pgroot"/*/; do as_postgres "$pgbin/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1; done
      [ -d "$work" ] && cp "$pgroot"/*.log "$work/" 2>/dev/null; rm -rf "$pgroot"' EXIT
    chown postgres "$pgroot"
    # The server's processes write the exit statistics too.
    chmod 711 "$work" && install -m 666 -o postgres /dev/null "$work/stats.json"
    ;;
  *) fail "unknown case $name" ;;
  esac
}

[ -f "$lib" ] || fail "$lib is not built"
# A directory of this run's own: runs in the same tree must not mix files.
# Kept when the test fails, removed when it passes.
mkdir -p "$base"
work=$(mktemp -d "$base/preload-$name.XXXXXX") || fail "mktemp failed"
prepare

"case_$name" "$work/plain.out" 2>"$work/plain.err" || fail "without the preload the $name case fails (exit $?)"
(
  export LD_PRELOAD=$lib HAKMEM_STATS=json HAKMEM_STATS_FILE=$work/stats.json
  "case_$name" "$work/hak.out" 2>"$work/hak.err"
)
rc=$?
if [ $rc -ne 0 ]; then
  tail -n 20 "$work/hak.err" >&2
  [ $rc -gt 128 ] && fail "under the preload: killed by signal $((rc - 128)) ($(kill -l $((rc - 128))))"
  fail "under the preload: exit status $rc (stderr above)"
fi
cmp -s "$work/plain.out" "$work/hak.out" || fail "output differs with the preload (see $work/plain.out and hak.out)"
if ! cmp -s "$work/plain.err" "$work/hak.err"; then
  diff "$work/plain.err" "$work/hak.err" | head -n 20 >&2
  fail "stderr differs with the preload (diff above)"
fi
[ -s "$work/stats.json" ] || fail "HAKMEM_STATS_FILE=$work/stats.json was not written"
grep -Eq '"pages_activated"[[:space:]]*:[[:space:]]*[1-9]' "$work/stats.json" ||
  fail "stats show no pages_activated: $(head -c 400 "$work/stats.json")"
echo "$name: same output ($(wc -c <"$work/hak.out") bytes) with and without hakmem"
rm -rf "$work"
exit 0
