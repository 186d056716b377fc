#!/usr/bin/env bash
# Runs the bench/ workloads under glibc, hakmem and the peer allocators and
# writes bench/results/latest.md (also printed), latest.json and latest.png.
#
# Each cell (workload x allocator x thread count) runs BENCH_RUNS times and
# reports the median. Allocators are interleaved run by run (A B C, A B C, ...)
# so a noisy neighbour on the machine hits all of them alike. Each run is
# pinned to the first N cpus and node 0's memory with numactl when it works.
# A crash, corruption or timeout is recorded as a result (CRASH), never aborts.
#
# Environment:
#   BENCH_ONLY=larson,fragment     workloads (default: all); redis, memcached and postgres are the
#                                  real servers (bench/servers.sh): BENCH_ONLY=redis,memcached runs
#                                  just them; postgres runs only when named or with BENCH_FULL=1
#   BENCH_SERVERS=0                skip the servers (default: 1, run them)
#   BENCH_SERVER_RUNS=5            runs per server and allocator (default: 5)
#   BENCH_IDLE=5                   seconds a server idles after FLUSHALL before its RSS is read
#   BENCH_ALLOCS=glibc,hakmem,...  allocators (default: glibc,hakmem,hakmem-batch1,mimalloc,
#                                  jemalloc,tcmalloc); NAME=/path/to/lib.so adds any preloadable
#                                  allocator; hakmem-batch1 is hakmem with HAKMEM_MAILBOX_BATCH=1,
#                                  run on crossnode only; hakmem-nobg (not by default) is hakmem
#                                  with HAKMEM_BACKGROUND=0
#   BENCH_THREADS=1,2              thread counts (default: 1,2)
#   BENCH_RUNS=5                   runs per cell (default: 5)
#   BENCH_FULL=1                   longer runs (3 s) and bigger working sets
#   BENCH_SECS=0.4                 seconds per run (default: 0.4, or 3 with BENCH_FULL=1)
#   BENCH_OUT=bench/results        output folder
#   BENCH_MODES=1                  also run the mode table: largeheap under hakmem with each
#                                  HAKMEM_* mode, and mimalloc (bench/results/modes.md);
#                                  BENCH_MODES=only runs just that table
#   BENCH_MODES_RUNS=3             runs per mode table cell (default: 3)
#   BENCH_HUGEPAGES=N              as root: vm.nr_hugepages=N during the mode table (for the
#                                  HAKMEM_HUGETLB=1 row), restored afterwards (default: leave it)
set -u
cd "$(dirname "$0")/.." || exit 1
root=$PWD

all_workloads=(larson larson_mid prodcons crossnode churn_small churn_mid pingpong falseshare realloc_grow fragment largeheap
  largelive hugereplace manythreads)
all_servers=(redis memcached postgres)
workloads=("${all_workloads[@]}")
servers_list=(redis memcached)
[ "${BENCH_FULL:-0}" = 1 ] && servers_list=("${all_servers[@]}")
modes_mode=${BENCH_MODES:-0}
case $modes_mode in 0 | 1 | only) ;; *) echo "run.sh: BENCH_MODES must be 0, 1 or only" >&2; exit 64 ;; esac
if [ -n "${BENCH_ONLY:-}" ]; then
  IFS=, read -r -a only <<<"$BENCH_ONLY"
  workloads=() servers_list=()
  for w in "${only[@]}"; do
    if [[ " ${all_servers[*]} " == *" $w "* ]]; then servers_list+=("$w"); else workloads+=("$w"); fi
  done
fi
[ "${BENCH_SERVERS:-1}" = 0 ] && servers_list=()
IFS=, read -r -a allocs <<<"${BENCH_ALLOCS:-glibc,hakmem,hakmem-batch1,mimalloc,jemalloc,tcmalloc}"
IFS=, read -r -a threads <<<"${BENCH_THREADS:-1,2}"
runs=${BENCH_RUNS:-5}
full=${BENCH_FULL:-0}
[ "$full" = 1 ] && secs=${BENCH_SECS:-3} || secs=${BENCH_SECS:-0.4}
out=${BENCH_OUT:-bench/results}
bin=build/bench

for w in "${workloads[@]}"; do
  [[ " ${all_workloads[*]} " == *" $w "* ]] || { echo "run.sh: unknown workload '$w'" >&2; exit 64; }
done
[ ${#workloads[@]} -gt 0 ] || [ ${#servers_list[@]} -gt 0 ] || [ "$modes_mode" = only ] ||
  { echo "run.sh: nothing to run" >&2; exit 64; }

# Builds only the bench binaries: the library may be another developer's work in progress.
targets=("$bin/runone")
# A workload is a program run with its own arguments; larson_mid is larson
# with the seed's 2-32 KiB blocks.
program_of() { [ "$1" = larson_mid ] && echo larson || echo "$1"; }
for w in "${workloads[@]}"; do targets+=("$bin/$(program_of "$w")"); done
[ "$modes_mode" != 0 ] && targets+=("$bin/largeheap")
make -s --no-print-directory "${targets[@]}" || { echo "run.sh: build failed" >&2; exit 1; }

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
raw=$tmp/raw.tsv
notes=$tmp/notes.txt
: >"$raw"
: >"$notes"
note() { echo "$*" >>"$notes"; echo "run.sh: $*" >&2; }

# Where Debian (any architecture) and others put the peers.
find_lib() {
  local d
  for d in /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
    [ -e "$d/$1" ] && { echo "$d/$1"; return 0; }
  done
  return 1
}

# Resolves each allocator to the library to preload ("" = glibc); skips the missing.
names=()
libs=()
envs=() # HAKMEM_* settings of a run, "" for none (the mode table's rows)
only_for=() # the one workload an allocator row is for, "" for all
for a in "${allocs[@]}"; do
  lib= row_env= only=
  case $a in
    glibc) ;;
    hakmem) lib=$root/build/libhakmem.so ;;
    # cross-node frees one by one instead of batched: only crossnode has any
    hakmem-batch1) lib=$root/build/libhakmem.so row_env=HAKMEM_MAILBOX_BATCH=1 only=crossnode ;;
    # without the background thread: what it costs a busy program
    hakmem-nobg) lib=$root/build/libhakmem.so row_env=HAKMEM_BACKGROUND=0 ;;
    mimalloc) lib=$(find_lib libmimalloc.so.2) ;;
    jemalloc) lib=$(find_lib libjemalloc.so.2) ;;
    tcmalloc) lib=$(find_lib libtcmalloc_minimal.so.4) ;;
    *=*) lib=${a#*=}; a=${a%%=*} ;;
    *) note "$a: unknown allocator (use NAME=/path/lib.so): skipped"; continue ;;
  esac
  [ -n "$only" ] && [[ " ${workloads[*]} " != *" $only "* ]] && continue
  if [ "$a" != glibc ] && [ ! -e "$lib" ]; then
    case $a in
      hakmem | hakmem-batch1 | hakmem-nobg) note "hakmem: build/libhakmem.so missing (make lib): skipped" ;;
      *) note "$a: library not found: skipped" ;;
    esac
    continue
  fi
  # ld.so only warns when it cannot preload, and the run would silently be glibc.
  if [ -n "$lib" ] && LD_PRELOAD=$lib /bin/true 2>&1 | grep -q 'cannot be preloaded'; then
    note "$a: $lib cannot be preloaded: skipped"
    continue
  fi
  names+=("$a")
  libs+=("$lib")
  envs+=("$row_env")
  only_for+=("$only")
done
[ ${#names[@]} -gt 0 ] || [ "$modes_mode" = only ] || { echo "run.sh: no allocator to run" >&2; exit 1; }

# Pinning: the first N cpus we may use, and node 0's memory, if numactl works here.
pin=none
cpus=()
if command -v numactl >/dev/null; then
  read -r -a cpus <<<"$(numactl --show | sed -n 's/^physcpubind: *//p')"
  if numactl --physcpubind="${cpus[0]}" --membind=0 true 2>/dev/null; then
    pin=membind
  elif numactl --physcpubind="${cpus[0]}" true 2>/dev/null; then
    pin=cpu
    note "numactl --membind=0 refused here: pinned to cpus only"
  fi
fi
[ "$pin" = none ] && note "numactl missing or not permitted: runs are not pinned"
pin_cmd() { # $1 = threads
  [ "$pin" = none ] && return
  local n=$1 list
  [ "$n" -gt ${#cpus[@]} ] && n=${#cpus[@]}
  list=$(echo "${cpus[@]:0:$n}" | tr ' ' ,)
  echo numactl --physcpubind="$list"
  [ "$pin" = membind ] && echo --membind=0
}
for t in "${threads[@]}"; do
  [ "$pin" != none ] && [ "$t" -gt ${#cpus[@]} ] &&
    note "$t threads on ${#cpus[@]} cpus: oversubscribed"
done

# Arguments of each workload for one run (see the usage comment of bench/NAME.c).
args_for() { # $1 = workload, $2 = threads
  local w=$1 t=$2 big=$full
  case $w in
    larson) [ "$big" = 1 ] && echo "$secs 8 1000 5000 20000 4141 $t" || echo "$secs 8 1000 1000 10000 4141 $t" ;;
    larson_mid) [ "$big" = 1 ] && echo "$secs 2048 32768 5000 20000 4141 $t" || echo "$secs 2048 32768 1000 10000 4141 $t" ;;
    prodcons) echo "$secs $t 2048 32768 64" ;;
    crossnode) echo "$secs $t 16 1024" ;;
    churn_small) [ "$big" = 1 ] && echo "$secs $t 8 512 65536" || echo "$secs $t 8 512 4096" ;;
    churn_mid) [ "$big" = 1 ] && echo "$secs $t 2048 32768 4096" || echo "$secs $t 2048 32768 256" ;;
    pingpong) echo "$secs $t 16 512 64" ;;
    falseshare) echo "$secs $t 8 64 1000" ;;
    realloc_grow) [ "$big" = 1 ] && echo "$secs $t 16777216" || echo "$secs $t 4194304" ;;
    fragment) [ "$big" = 1 ] && echo "$secs $t 10000 10000 2097152" || echo "$secs $t 2000 2000 1048576" ;;
    # heap MiB, threads, rounds: a run does not depend on BENCH_SECS
    largeheap) [ "$big" = 1 ] && echo "1024 $t 4" || echo "256 $t 4" ;;
    # live blocks, then sizes in KiB (a child process per size)
    largelive) [ "$big" = 1 ] && echo "256 128 256 512 768 1024 1536 2048 4096 8192 32768" ||
      echo "128 128 256 512 768 1024 1536 2048 4096" ;;
    # replacements of 20 live 5-25 MiB blocks (the issue's figures are for 2000)
    hugereplace) [ "$big" = 1 ] && echo 2000 || echo 200 ;;
    # seconds, 256 threads whatever T (T = the CPUs they are pinned to)
    manythreads) [ "$big" = 1 ] && echo "3 256" || echo "1 256" ;;
  esac
}

# Thread counts a workload runs at: the one-thread memory workloads at 1,
# manythreads (256 threads) pinned to the largest count.
threads_for() { # $1 = workload
  local t max=0
  case $1 in
    largelive | hugereplace) echo 1 ;;
    manythreads) for t in "${threads[@]}"; do [ "$t" -gt "$max" ] && max=$t; done; echo "$max" ;;
    *) echo "${threads[@]}" ;;
  esac
}

# Runs per cell: the slow memory workloads at most 3.
runs_for() { # $1 = workload
  case $1 in
    largelive | hugereplace | manythreads) [ "$runs" -gt 3 ] && echo 3 || echo "$runs" ;;
    *) echo "$runs" ;;
  esac
}

# Threads a workload runs at thread count $2, so each gets a CPU where there
# are enough: the paired workloads run two per pair.
threads_of() { # $1 = workload, $2 = threads
  case $1 in
    prodcons | crossnode | pingpong) echo $((2 * $2)) ;;
    *) echo "$2" ;;
  esac
}

# Environment a workload needs under every allocator (the peers ignore it):
# crossnode's pairs span two nodes, virtual ones on a one-node machine.
env_for() { [ "$1" = crossnode ] && echo HAKMEM_NODES=2; }

# Whether allocator row $2 runs workload $1.
runs_on() { [ -z "${only_for[$2]:-}" ] || [ "${only_for[$2]}" = "$1" ]; }

# A hung allocator must not hang the runner.
timeout=$(awk -v s="$secs" 'BEGIN { printf "%d", s * 10 + 30 }')

# Value of key $1 in runone's stat line $2.
stat_get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

# One run: appends a record to $raw and prints a progress line.
# Record: workload alloc threads run status code ops maxrss_kb minflt wall_s extra detail
run_one() { # $1 workload $2 allocator index $3 threads $4 run
  local w=$1 a=${names[$2]} lib=${libs[$2]} t=$3 r=$4 st ops extra detail status code
  rm -f "$tmp/stat"
  # shellcheck disable=SC2046 # word splitting of the env, pin and argument lists is wanted
  env ${envs[$2]} $(env_for "$w") $(pin_cmd "$(threads_of "$w" "$t")") "$bin/runone" -t "$timeout" -p "$lib" -o "$tmp/stat" -- \
    "$bin/$(program_of "$w")" $(args_for "$w" "$t") >"$tmp/out" 2>"$tmp/err" </dev/null
  st=$(cat "$tmp/stat" 2>/dev/null)
  status=$(sed -n 's/.*status=\([a-z]*\).*/\1/p' <<<"$st")
  code=$(sed -n 's/.* code=\([0-9]*\).*/\1/p' <<<"$st")
  local prog
  prog=$(program_of "$w")
  ops=$(sed -n "s/^$prog: \([0-9.]*\) ops\/s.*/\1/p" "$tmp/out" | head -n 1)
  extra=$(sed -n "s/^$prog: [0-9.]* ops\/s *//p" "$tmp/out" | head -n 1)
  detail=
  if [ -z "$status" ]; then
    status=error detail="runone failed: $(tail -n 1 "$tmp/err")"
  elif grep -q 'cannot be preloaded' "$tmp/err"; then
    status=error detail="$lib cannot be preloaded"
  elif [ "$status" = ok ] && [ -z "$ops" ]; then
    status=noresult detail="no result line: $(tail -n 1 "$tmp/err")"
  elif [ "$status" = signal ]; then
    detail="killed by SIG$(kill -l "$code" 2>/dev/null || echo "$code")"
  elif [ "$status" = timeout ]; then
    detail="timed out after ${timeout}s"
  elif [ "$status" != ok ]; then
    detail="$status $code: $(grep -v "^$w: t=" "$tmp/err" | tail -n 1)"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$a" "$t" "$r" "$status" \
    "${code:-0}" "$ops" "$(stat_get maxrss_kb "$st")" "$(stat_get minflt "$st")" "$(stat_get wall_s "$st")" "$extra" \
    "$(tr '\t\n' '  ' <<<"$detail" | sed 's/ *$//')" >>"$raw"
  done_runs=$((done_runs + 1))
  if [ "$status" = ok ]; then
    printf '[%d/%d] %-12s %-8s %2sT run %d: %s ops/s\n' "$done_runs" "$total" "$w" "$a" "$t" "$r" "$ops" >&2
  else
    printf '[%d/%d] %-12s %-8s %2sT run %d: CRASH (%s)\n' "$done_runs" "$total" "$w" "$a" "$t" "$r" "$detail" >&2
  fi
}

# The machine and the run, for the reports' header.
write_meta() { # $1 file $2 runs $3 elapsed
  {
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
    echo "cpus=$(nproc)"
    echo "kernel=$(uname -r)"
    echo "runs=$2"
    echo "secs=$secs"
    echo "full=$full"
    echo "pinning=$pin"
    echo "elapsed=$3"
  } >"$1"
}
py=/usr/bin/python3
[ -x "$py" ] || py=python3

# In a virtual machine the first touch of guest memory the host has not
# backed yet costs a host fault per page, seen as system time of whichever
# run gets that memory first (mostly huge pages, taken whole from the free
# lists). One untimed largeheap run under hakmem (THP) first, so the timed
# runs of large heaps start from memory that has been touched before.
warm_memory() {
  local lib=$root/build/libhakmem.so
  [ -e "$lib" ] || lib=
  "$bin/runone" -t "$timeout" -p "$lib" -o "$tmp/warm" -- \
    "$bin/largeheap" $(args_for largeheap 1 | cut -d' ' -f1) 1 1 >/dev/null 2>&1 </dev/null
}

# Every workload under every allocator: latest.md, latest.json, latest.png.
compare() {
  local cells=0 w i t wt
  total=0
  for w in "${workloads[@]}"; do
    read -r -a wt <<<"$(threads_for "$w")"
    for i in "${!names[@]}"; do runs_on "$w" "$i" && total=$((total + ${#wt[@]} * $(runs_for "$w"))); done
  done
  done_runs=0
  started=$(date +%s)
  [ ${#workloads[@]} -gt 0 ] &&
    echo "run.sh: ${#workloads[@]} workloads x ${#threads[@]} thread counts x ${#names[@]} allocators x $runs runs = $total runs of ${secs}s (pinning: $pin)" >&2
  for w in "${workloads[@]}"; do
    [ "$w" = largeheap ] && warm_memory
    read -r -a wt <<<"$(threads_for "$w")"
    for t in "${wt[@]}"; do
      for ((r = 1; r <= $(runs_for "$w"); r++)); do
        for i in "${!names[@]}"; do
          runs_on "$w" "$i" && run_one "$w" "$i" "$t" "$r"
        done
      done
    done
  done
  srv_raw=$tmp/servers.tsv
  : >"$srv_raw"
  ran_servers=()
  if [ ${#servers_list[@]} -gt 0 ]; then
    # shellcheck source=bench/servers.sh
    . bench/servers.sh
    servers
  fi
  elapsed=$(($(date +%s) - started))

  # Chart only when it can be drawn: gnuplot present and glibc measured.
  chart=no
  if ! command -v gnuplot >/dev/null; then
    note "gnuplot missing: no chart"
  elif [[ " ${names[*]} " != *" glibc "* ]]; then
    note "glibc not measured: no chart (it is the chart's baseline)"
  elif [ ${#workloads[@]} -eq 0 ]; then
    :
  else
    chart=yes
  fi

  write_meta "$tmp/meta" "$runs" "$elapsed"
  "$py" bench/report.py --raw "$raw" --meta "$tmp/meta" --notes "$notes" --out "$out" \
    --allocs "$(IFS=,; echo "${names[*]}")" --threads "$(IFS=,; echo "${threads[*]}")" \
    --workloads "$(IFS=,; echo "${workloads[*]}")" --chart "$chart" --chart-data "$tmp/chart.dat" \
    --servers-raw "$srv_raw" --servers "$(IFS=,; echo "${ran_servers[*]}")" ||
    { echo "run.sh: report failed" >&2; exit 1; }

  if [ "$chart" = yes ]; then
    rm -f "$out/latest.png"
    gnuplot -e "datafile='$tmp/chart.dat'; outfile='$out/latest.png'; ncols=${#names[@]}" \
      bench/chart.gp || echo "run.sh: gnuplot failed: no chart" >&2
  else
    rm -f "$out/latest.png"
  fi

  cat "$out/latest.md"
  echo "run.sh: $total runs in ${elapsed}s; wrote $out/latest.md, latest.json$([ "$chart" = yes ] && echo ', latest.png')" >&2
}

# The mode table: largeheap under hakmem in each of its HAKMEM_* modes, and
# mimalloc for comparison: bench/results/modes.md and modes.json.
mode_list=(default HAKMEM_PREFAULT=page HAKMEM_PREFAULT=ahead HAKMEM_UFFD=1 HAKMEM_PURGE=page
  HAKMEM_PURGE=off HAKMEM_BACKGROUND=0 HAKMEM_PURGE_ENGINE=uring HAKMEM_PURGE_ENGINE=vector
  HAKMEM_PURGE_ENGINE=sync HAKMEM_THP=0 HAKMEM_THP=1 HAKMEM_HUGETLB=1)
hugepages_file=/proc/sys/vm/nr_hugepages
hugepages_old=

restore_hugepages() { [ -z "$hugepages_old" ] || echo "$hugepages_old" >"$hugepages_file" 2>/dev/null; }

modes() {
  local hak=$root/build/libhakmem.so mi m i t r mruns=${BENCH_MODES_RUNS:-3} hp=${BENCH_HUGEPAGES:-}
  : >"$notes"
  if [ ! -e "$hak" ] || LD_PRELOAD=$hak /bin/true 2>&1 | grep -q 'cannot be preloaded'; then
    echo "run.sh: mode table: $hak missing or not preloadable (make lib)" >&2
    exit 1
  fi
  names=() libs=() envs=() only_for=()
  for m in "${mode_list[@]}"; do
    names+=("$m")
    libs+=("$hak")
    if [ "$m" = default ]; then envs+=(""); else envs+=("$m"); fi
  done
  if mi=$(find_lib libmimalloc.so.2); then
    names+=(mimalloc)
    libs+=("$mi")
    envs+=("")
  else
    note "mimalloc: library not found: no comparison row"
  fi
  # Set once for the whole table: a pool made afresh before each run would
  # hand that run memory never touched before (slow in a VM, see warm_memory).
  if [ -n "$hp" ] && [ "$(id -u)" = 0 ] && [ -w "$hugepages_file" ]; then
    hugepages_old=$(cat "$hugepages_file")
    trap 'restore_hugepages; rm -rf "$tmp"' EXIT
    echo "$hp" >"$hugepages_file" 2>/dev/null
    note "HAKMEM_HUGETLB=1 ran with vm.nr_hugepages=$(cat "$hugepages_file") (BENCH_HUGEPAGES=$hp; $hugepages_old otherwise)"
  elif [ -n "$hp" ]; then
    note "BENCH_HUGEPAGES=$hp needs root: vm.nr_hugepages left at $(cat "$hugepages_file")"
    hp=
  fi
  workloads=(largeheap)
  raw=$tmp/modes.tsv
  : >"$raw"
  total=$((${#threads[@]} * mruns * ${#names[@]}))
  done_runs=0
  local started heap_mib n=${#names[@]}
  heap_mib=$(args_for largeheap 1 | cut -d' ' -f1)
  started=$(date +%s)
  warm_memory
  echo "run.sh: mode table: ${#names[@]} modes x ${#threads[@]} thread counts x $mruns runs = $total runs of largeheap $heap_mib MiB" >&2
  for t in "${threads[@]}"; do
    for ((r = 1; r <= mruns; r++)); do
      # each run starts at another mode: a run pays for what the one before
      # left behind (memory to fault in again), and no mode always comes first
      for ((k = 0; k < n; k++)); do
        run_one largeheap $(((k + r - 1) % n)) "$t" "$r"
      done
    done
  done
  restore_hugepages
  hugepages_old=
  if [ -z "$hp" ]; then
    note "HAKMEM_HUGETLB=1 needs free hugetlbfs pages: vm.nr_hugepages was $(cat "$hugepages_file") (the heap needs about $((heap_mib * 5 / 8 + 8)); as root, BENCH_HUGEPAGES=N sets it for the table); without them hakmem falls back to THP and hugetlb MiB stays 0"
  fi
  write_meta "$tmp/meta_modes" "$mruns" $(($(date +%s) - started))
  "$py" bench/report.py modes --raw "$raw" --meta "$tmp/meta_modes" --notes "$notes" --out "$out" \
    --allocs "$(IFS=,; echo "${names[*]}")" --threads "$(IFS=,; echo "${threads[*]}")" ||
    { echo "run.sh: mode report failed" >&2; exit 1; }
  cat "$out/modes.md"
  echo "run.sh: mode table: $total runs in $(($(date +%s) - started))s; wrote $out/modes.md, modes.json" >&2
}

[ "$modes_mode" = only ] || compare
[ "$modes_mode" = 0 ] || modes
