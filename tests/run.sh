#!/usr/bin/env bash
# Runs every hakmem test, each as its own process under a timeout, and prints
# one line per test: "PASS name", "FAIL name (reason)" or "SKIP name (why)",
# then the tails of the failed tests' logs, then "N passed, N failed[, N
# skipped]". Exits 1 when any test failed. Expects `make tests` to have built
# the libraries and build/tests/*; builds the sanitizer variants of the
# stress test itself. Logs: build/tests/logs/NAME.log (logs is a link to
# this run's own directory, so runs in the same tree do not mix).
# Arguments: run only these tests (a name also selects its variants:
# `fuzz` runs fuzz, fuzz_page, ..., fuzz_debug); none: all of them.
set -u
only=("$@")
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
bin=${HAK_TEST_BIN:-$repo/build/tests} # another build's test binaries
mkdir -p "$bin"
find "$bin" -maxdepth 1 -name 'logs.*' -mmin +120 -exec rm -rf {} + 2>/dev/null
logs=$(mktemp -d "$bin/logs.XXXXXX") || exit 2
rm -rf "$bin/logs"
ln -sfn "$(basename "$logs")" "$bin/logs"

TIMEOUT=${HAK_TEST_TIMEOUT:-120}
# Link the sanitizer builds with the libraries the Makefile links tests with.
LIBS=$(sed -n 's/^LDLIBS[[:space:]]*:=[[:space:]]*//p' Makefile)
LIBS=${LIBS:--lpthread}
passed=0 failed=0 skipped=0
failures=()

# The first line of the log matching a pattern, prefix stripped.
first_line() { grep -m1 -E "$2" "$1" | sed -E "s/^($2)[[:space:]]*//" | cut -c1-200; }

# run_one NAME CMD...: runs CMD under the timeout with its output in the log.
# Whether NAME is one of the tests asked for.
selected() {
  local want
  [ ${#only[@]} -eq 0 ] && return 0
  for want in "${only[@]}"; do
    [[ $1 == "$want" || $1 == "$want"_* ]] && return 0
  done
  return 1
}

run_one() {
  local name=$1 log=$logs/$1.log rc why start=$SECONDS
  shift
  selected "$name" || return 0
  timeout -k 10 "$TIMEOUT" "$@" >"$log" 2>&1 </dev/null
  rc=$?
  echo "$name $((SECONDS - start))s" >>"$logs/times"
  if [ $rc -eq 0 ]; then
    echo "PASS $name"
    passed=$((passed + 1))
    return
  fi
  if [ $rc -eq 77 ]; then
    echo "SKIP $name ($(first_line "$log" 'SKIP:'))"
    skipped=$((skipped + 1))
    return
  fi
  why=$(first_line "$log" 'FAIL:')
  [ -n "$why" ] || why=$(grep -m1 -E 'ThreadSanitizer|runtime error|Sanitizer' "$log" | cut -c1-200)
  case $rc in
  124 | 137) why="timed out after ${TIMEOUT}s${why:+; $why}" ;;
  *)
    if [ $rc -gt 128 ]; then
      why="killed by SIG$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128)))${why:+; $why}"
    else
      why=${why:-exit status $rc}
    fi
    ;;
  esac
  echo "FAIL $name ($why)"
  failed=$((failed + 1))
  failures+=("$name")
}

# A test binary the Makefile builds from tests/NAME.c.
run_bin() {
  local name=$1
  shift
  selected "$name" || return 0
  if [ ! -x "$bin/$name" ]; then
    echo "FAIL: $bin/$name is not built" >"$logs/$name.log"
    echo "FAIL $name ($bin/$name is not built: run make tests)"
    failed=$((failed + 1))
    return
  fi
  run_one "$name" "$bin/$name" "$@"
}

# Builds the stress test (SAN_SRC=tests/OTHER.c for another) against a
# sanitizer build of the allocator (hak_* entry points, no malloc override)
# and runs it.
run_sanitized() {
  local name=$1 kind=$2 flag=$3 src=${SAN_SRC:-tests/stress_mt.c}
  shift 3
  selected "$name" || return 0
  local lib=$repo/build/$kind/libhakmem.a out=$bin/$name log=$logs/$name.log
  if [ ! -f "$lib" ]; then
    echo "FAIL $name (build/$kind/libhakmem.a is not built: run make sanitize)"
    failed=$((failed + 1))
    return
  fi
  # Whether this machine can run such a program at all.
  local probe=$logs/probe-$kind
  printf '#include <pthread.h>\nstatic void *f(void *a) { return a; }\nint main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }\n' >"$probe.c"
  if ! cc "$flag" -o "$probe" "$probe.c" -lpthread >"$log" 2>&1 || ! "$probe" >>"$log" 2>&1; then
    echo "SKIP $name (a trivial $flag program does not build or run here: $(head -c 150 "$log" | tr '\n' ' '))"
    skipped=$((skipped + 1))
    return
  fi
  if ! cc -std=gnu11 -Wall -Wextra -Werror -Iuapi -O1 -g "$flag" -fno-omit-frame-pointer \
    -DSTRESS_HAK -o "$out.$$" "$src" "$lib" $LIBS >"$log" 2>&1; then
    echo "FAIL $name (does not compile with $flag: $(grep -m1 -E 'error|undefined' "$log" | cut -c1-160))"
    failed=$((failed + 1))
    failures+=("$name")
    return
  fi
  mv -f "$out.$$" "$out" # a rename: a concurrent run keeps its own binary
  # 5-15x slower than the plain build, more on a loaded machine (shared_heaps_tsan
  # took 25-73 s here while two builds ran): twice the time before it counts as hung
  local TIMEOUT=$((TIMEOUT * 2))
  run_one "$name" "$out" "$@"
}

# run_debug NAME: NAME's copy built without hakmem (NAME_preload) under the
# checked library preloaded, with the argument "debug", as NAME_debug.
run_debug() {
  local name=$1
  selected "${name}_debug" || return 0
  if [ -x "$bin/${name}_preload" ] && [ -f "$repo/build/debug/libhakmem.so" ]; then
    run_one "${name}_debug" env LD_PRELOAD="$repo/build/debug/libhakmem.so" \
      "$bin/${name}_preload" debug
  else
    run_bin "${name}_preload" # reports it as not built
  fi
}

run_bin api_sizes
run_bin api_align
run_bin api_bad_input
run_bin api_calloc
run_bin api_realloc
run_bin api_misc
run_bin api_foreign_free
run_bin abort_on_error
# Interior pointers, double frees, zero-size aligned blocks; then the same
# and the owner's fast path (checked in debug builds only) under the debug
# library, preloaded into a copy of the test that does not link hakmem.
run_bin bad_pointers
run_debug bad_pointers
# The remote-free protocol's windows, forced through the checked build's
# hooks: a freer stopped in FREEING, a thread stopped mid-exit.
run_bin debug_windows freeing
run_one debug_windows_chain "$bin/debug_windows" freeing_chain
run_one debug_windows_exit "$bin/debug_windows" exit
run_one debug_windows_rotate "$bin/debug_windows" rotate
# Its promises between threads: pages listed by their region's node (no two
# owners), mailboxes drained when their node has no allocating thread, no
# thread started by an exiting one.
run_bin protocol
run_bin stats_api
run_bin stats_env
# Out of address space: a 512 MiB limit on this one process.
if [ -x "$bin/oom_ulimit" ]; then
  run_one oom_ulimit bash -c 'ulimit -v 524288 || exit 2; exec "$0"' "$bin/oom_ulimit"
else
  run_bin oom_ulimit
fi
run_bin stress_mt 8 40000
# Remote frees handed over in chains from the freer's stash: exact counts,
# a stash outliving its page's owner, and pairs of threads. Without the
# background thread, which hands over a stash left alone for one of its
# periods (the freer reading its statistics may leave it that long).
run_one remote_stash env HAKMEM_BACKGROUND=0 "$bin/remote_stash"
# the same where the scheduler may put the freer on another (virtual) node
run_one remote_stash_nodes2 env HAKMEM_BACKGROUND=0 HAKMEM_NODES=2 "$bin/remote_stash"
# The background thread backs off while a busy program gives it nothing to
# do (yet comes when memory is freed), and collapses no region while the
# program keeps its CPU busy.
run_one bg_backoff env HAKMEM_THP=0 "$bin/bg_backoff" quiet
run_one bg_backoff_collapse "$bin/bg_backoff" collapse
# hakmem's threads block every signal: one the program's threads block
# stays pending for them (postgres's postmaster ran its SIGCHLD reaper on
# the background thread too, and spun); with the userfaultfd thread too.
run_bin bg_signals 2
run_one bg_signals_uffd env HAKMEM_UFFD=1 "$bin/bg_signals" 3
# Many threads wake the dozing background thread at once (also under TSan below).
run_one bg_wake env HAKMEM_PURGE_DELAY_MS=10 "$bin/bg_wake" 8 30
# Work made while the background thread dozes wakes it: a block stashed
# onto an entry it took whole is handed over within a few periods, ...
run_one bg_doze env HAKMEM_PURGE_DELAY_MS=100 "$bin/bg_doze"
# ... and a shared heap used while it dozes: its page goes back, then it
# backs off again.
run_one bg_doze_shared env HAKMEM_MAX_HEAPS=1 HAKMEM_PURGE=page "$bin/bg_doze" shared
# Stashes taken by other threads while their freers push: malloc_trim and
# hakmem_flush in a loop against pairs of freers, and an idle freer's stash
# handed over by the background thread.
run_bin stash_steal
# An idle thread's stash pins the pages of the blocks it freed (owner's malloc_trim).
run_bin stash_idle
run_one stash_idle_large "$bin/stash_idle" large
# fork while another thread's stash holds blocks of the forking thread's page.
run_one stash_fork "$bin/stash_steal" fork
# the same with mid blocks of a class the freer allocates too (its mid cache)
run_one stash_idle_mid "$bin/stash_steal" idle 3000
run_one stash_fork_mid "$bin/stash_steal" fork 3000
run_bin midcache_mt 8 20000
run_one midcache_mt_nodes2 env HAKMEM_NODES=2 "$bin/midcache_mt" 8 20000
# More threads than HAKMEM_MAX_HEAPS: heaps shared under locks, with
# hand-offs, thread exits and forks; the limit's counters.
run_bin shared_heaps
run_bin seed_remote
run_bin thread_exit
run_bin thread_done
# key destructors that allocate in every round, after the heap's own ran
run_bin key_destructor
run_one key_destructor_unlimited env HAKMEM_MAX_HEAPS=0 "$bin/key_destructor"
run_bin fork
# fork against stdio locks (glibc bug 19431), from a signal handler inside a
# fork, and the child's new threads never taking over dead threads' heaps.
run_bin fork_deadlock
run_bin fork_sigfork
# fork while the background thread has pages out for purging (one CPU, the
# thread SCHED_IDLE): every fork child gets every page back.
run_bin fork_purging
run_bin dlopen "$repo/build/libhakmem-dlopen.so"
# calloc and the stress again in the allocator's other modes: purging at
# once through each engine (memory given back and marked known-zero while
# other blocks and threads reuse it), per-page purge, userfaultfd, and
# prefaulting from a background thread.
modes=(
  "purge0:HAKMEM_PURGE_DELAY_MS=0"
  "uring:HAKMEM_PURGE_DELAY_MS=0 HAKMEM_PURGE_ENGINE=uring"
  "vector:HAKMEM_PURGE_DELAY_MS=0 HAKMEM_PURGE_ENGINE=vector"
  "purgepage:HAKMEM_PURGE_DELAY_MS=0 HAKMEM_PURGE_ENGINE=sync HAKMEM_PURGE=page"
  "uffd:HAKMEM_UFFD=1"
  "prefault:HAKMEM_PREFAULT=ahead HAKMEM_BACKGROUND=1 HAKMEM_PURGE_DELAY_MS=1"
  "shared:HAKMEM_MAX_HEAPS=1"
)
for mode in "${modes[@]}"; do
  # shellcheck disable=SC2086 # the variables are meant to split
  run_one "api_calloc_${mode%%:*}" env ${mode#*:} "$bin/api_calloc"
  # shellcheck disable=SC2086
  run_one "stress_mt_${mode%%:*}" env ${mode#*:} "$bin/stress_mt" 8 20000
done
run_one fork_uffd env HAKMEM_UFFD=1 "$bin/fork"
# userfaultfd in detail: faults per 64 KiB page, threads, purge, faults
# taken in the kernel, fork, refusal (as root, uffd_refused sets
# vm.unprivileged_userfaultfd to 0 for a moment and restores it), and a
# program closing every descriptor.
for t in faults threads read fork refused closefds; do run_bin "uffd_$t"; done
# Lazy zero, purge and huge pages through the allocator, each in children
# with HAKMEM_* set: calloc zero on fresh/dirty/purged memory, RSS given back
# (background, on activity, never with off), per-page purge, prefault fault
# counts, fresh large blocks populated for malloc (not calloc), THP and hugetlbfs (as root kmem_hugetlb changes the 2 MiB pool for
# a moment and restores it), bad values of every variable.
for t in calloc_zero rss_return purge_page prefault populate_large thp hugetlb bad_env; do run_bin "kmem_$t"; done
# HAKMEM_PREFAULT=ahead aimed at a hugetlbfs region unmapped before the
# background thread looks (as root, raises the 2 MiB pool for a moment).
run_bin kmem_hugetlb_ahead
# An emptied region keeps one 4 KiB page: its descriptors go back with it.
run_bin region_idle
# The purge engines (kmem/purge.c) called directly, each case in a fresh
# child; then through the allocator with each HAKMEM_PURGE_ENGINE, and with
# io_uring_setup (and process_madvise) forbidden by a seccomp filter.
run_bin purge_kmem
run_bin purge_alloc
# Memory purged and taken back at once, or three delays later: the next free
# memory is kept longer (the pool's delay grows), and still goes back while
# the process idles.
run_bin purge_refault
# Large and huge blocks: RSS / live bytes at most 1.05 from 128 KiB to 32 MiB
# (default and HAKMEM_THP=0, a child per case); freed mappings reused by a
# replace loop of 5-25 MiB blocks within a committed-memory bound, and
# blocks made of several cached pieces grown, shrunk and badly freed.
run_bin large_rss
# A 100 KB block takes free pages smaller classes left between used ones
# (short runs of touched pages), not fresh ones.
run_bin span_fit
# Two threads' spans in regions of their own, which costs no memory: a
# thread's freed pages still go to another before untouched ones, and a
# hugetlbfs region's free pages (resident) before a new region.
run_bin region_own
run_one region_own_touched "$bin/region_own" touched
run_one region_own_huge "$bin/region_own" huge
# realloc of a large block keeps its pointer while the pages after its span
# are free (grown, shrunk and grown again), moves when another block holds
# them; pages purged before a grow took them count as committed again and
# are no zero pages for calloc. Also with every freed page purged at once.
run_bin realloc_large_grow
run_one realloc_large_grow_purgepage env HAKMEM_PURGE=page HAKMEM_PURGE_DELAY_MS=0 \
  "$bin/realloc_large_grow"
# Power-of-two buffers plus a small header (4-64 KiB): usable size at most
# 1/32 past the power of two, RSS / live bytes at most 1.05.
run_bin header_rss
run_bin small_rss
# Spans of the 4-64 KiB classes: at most 5% of their pages covered by no
# block (committed bytes over live bytes, every class).
run_bin span_tail
# Spans of a size class start their blocks at different offsets (colors):
# 12 KiB and 5 KiB blocks at many offsets modulo 4 KiB, power-of-two ones
# and aligned_alloc's still aligned, no two blocks overlapping.
run_bin span_color
# Every class's span edges: the color gap before a span's first block, the
# tail after its last, where blocks would begin without the color; frees
# there from another thread (and the owner's under the checked library)
# counted invalid; usable sizes, realloc in place, calloc zero, and aligned
# allocation of every power of two to 64 KiB at every class size.
run_bin span_bounds
run_debug span_bounds
# Reuse, not expiry: a 2 s delay, since 3000 rounds of up to 2 MiB writes
# take seconds on a loaded machine and a 100 ms delay unmaps the cache
# between two huge requests (57-62 of 69 reused at load 12).
HAKMEM_PURGE_DELAY_MS=2000 run_bin huge_reuse
# NUMA on this machine's node as 2 and 4 virtual nodes (HAKMEM_NODES, in
# children): cross-node frees batched through the mailboxes and drained,
# partial batches and exited owners, memory back after trim; placement and
# policy per HAKMEM_NUMA mode; a cross-node stress; bad values. Then the
# same on two real nodes: a QEMU VM (TCG) with the allocator inside.
run_bin numa_mailbox
run_bin numa_place
run_bin numa_stress 20000
run_bin numa_bad_env
run_one numa_vm bash tests/numa_vm.sh

export TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=67"
run_sanitized stress_mt_tsan tsan -fsanitize=thread 8 10000
run_sanitized stress_mt_ubsan ubsan -fsanitize=undefined 8 20000
SAN_SRC=tests/numa_stress.c run_sanitized numa_stress_tsan tsan -fsanitize=thread 3000
HAKMEM_BACKGROUND=0 SAN_SRC=tests/remote_stash.c run_sanitized remote_stash_tsan tsan -fsanitize=thread 8 1000
SAN_SRC=tests/stash_steal.c run_sanitized stash_steal_tsan tsan -fsanitize=thread 4 300
SAN_SRC=tests/midcache_mt.c run_sanitized midcache_mt_tsan tsan -fsanitize=thread 8 3000
HAKMEM_PURGE_DELAY_MS=10 SAN_SRC=tests/bg_wake.c run_sanitized bg_wake_tsan tsan -fsanitize=thread 8 20
SAN_SRC=tests/shared_heaps.c run_sanitized shared_heaps_tsan tsan -fsanitize=thread 600
unset TSAN_OPTIONS UBSAN_OPTIONS

for prog in python perl git gcc sort postgres; do
  run_one "preload_$prog" bash tests/preload.sh "$prog"
done

# Memory growth under hand-offs between short-lived threads (flat as the
# rounds double), then the shadow-model fuzzer in each mode: linked with the
# release library, and the checked debug library preloaded into a copy that
# does not link hakmem. HAKMEM_SOAK=1 makes each of them run longer.
run_bin handoff_churn
FUZZ_SECS=${HAK_FUZZ_SECS:-6}
fuzz_modes=(
  "fuzz:"
  "fuzz_purgepage:HAKMEM_PURGE=page"
  "fuzz_purge0:HAKMEM_PURGE_DELAY_MS=0"
  "fuzz_nodes2:HAKMEM_NODES=2"
  "fuzz_uffd:HAKMEM_UFFD=1"
  "fuzz_prefault:HAKMEM_PREFAULT=ahead"
  "fuzz_shared:HAKMEM_MAX_HEAPS=1"
  "fuzz_nobg:HAKMEM_BACKGROUND=0"
  "fuzz_thp1:HAKMEM_THP=1"
)
for mode in "${fuzz_modes[@]}"; do
  name=${mode%%:*} vars=${mode#*:}
  # shellcheck disable=SC2086 # the variables are meant to split
  run_one "$name" env $vars "$bin/fuzz" "$FUZZ_SECS"
  if [ ! -x "$bin/fuzz_preload" ] || [ ! -f "$repo/build/debug/libhakmem.so" ]; then
    echo "FAIL ${name}_debug ($bin/fuzz_preload or build/debug/libhakmem.so is not built: run make tests)"
    failed=$((failed + 1))
    continue
  fi
  # shellcheck disable=SC2086
  run_one "${name}_debug" env $vars LD_PRELOAD="$repo/build/debug/libhakmem.so" \
    "$bin/fuzz_preload" "$FUZZ_SECS"
done
run_one fuzz_preload env LD_PRELOAD="$repo/build/libhakmem.so" "$bin/fuzz_preload" "$FUZZ_SECS"

# Any tests/*.c the list above does not name still runs.
for src in tests/*.c; do
  name=$(basename "$src" .c)
  [ -e "$logs/$name.log" ] || run_bin "$name"
done

for name in "${failures[@]}"; do
  echo "--- $name: last lines of $logs/$name.log"
  tail -n 25 "$logs/$name.log" | sed 's/^/  | /'
done

if [ $skipped -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ $failed -eq 0 ]
