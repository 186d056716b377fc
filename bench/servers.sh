# Real servers under each allocator: redis-server driven by redis-benchmark,
# memcached driven by memaslap (Debian's memcaslap), postgres driven by
# pgbench (only with BENCH_FULL=1 or when named in BENCH_ONLY: its runs take
# about 3 minutes). Sourced by bench/run.sh,
# which provides names/libs/envs/only_for, find_lib, note, pin, cpus, tmp and
# out; servers() appends to $srv_raw one record per measurement:
#   server alloc run test size status value peak_kb detail cpu
# test is set/get/lpush/lpop (redis), mixed (memcached) or tps (postgres, size
# = select or sort, its two scripts): value = requests per second,
# peak_kb = the server's VmHWM over that value size's tests (reset with
# /proc/PID/clear_refs before each size), cpu = ms of CPU the server (all its
# threads, the allocator's too) used per 1000 requests of that value size's
# client run: on this shared 2-CPU machine requests/s of one run swing 2x with
# the other load (memcached 11k-29k under every allocator, the server's CPU
# within 10%), its CPU per request far less; test "idle": value = VmRSS after
# FLUSHALL / flush_all and BENCH_IDLE seconds idle, peak_kb = VmHWM of the run.
# postgres is a process per connection: its memory is the sum of the
# processes' anonymous PSS (shared buffers are shared memory, and a forked
# backend's copy-on-write pages count once), sampled every 0.1 s for the peak.
#
# Each run starts a fresh server on its own loopback port, pinned to the first
# CPU, the client pinned to the second. The idle wait of a run overlaps the
# next run (an idle server uses no CPU but its allocator's background work);
# the server is stopped when its idle reading is done. Every step is bounded:
# start 10 s, a client 60 s, stop 5 s then SIGKILL.
#
# Environment (see bench/README.md): BENCH_SERVERS=0 skips them,
# BENCH_SERVER_RUNS=5, BENCH_IDLE=5, BENCH_PORT=23000 (first port used).

srv_runs=${BENCH_SERVER_RUNS:-5}
srv_idle=${BENCH_IDLE:-5}
srv_port=${BENCH_PORT:-23000}
# redis value sizes and requests per test (a few seconds per run in all)
redis_sizes=(256 16384 100000)
redis_reqs=(100000 10000 2000)
[ "$full" = 1 ] && redis_reqs=(1000000 100000 10000)
# memaslap operations per run: the same work under every allocator, so peak
# RSS compares (a fixed time would let a slower allocator store less)
mc_ops=40000
[ "$full" = 1 ] && mc_ops=200000
# pgbench: seconds per test, 4 connections; scale 5 (500,000 accounts, 80 MB)
pg_secs=3
[ "$full" = 1 ] && pg_secs=10

size_label() { # 256 -> 256, 16384 -> 16k, 100000 -> 100k
  case $1 in 16384) echo 16k ;; 100000) echo 100k ;; *) echo "$1" ;; esac
}

# Pinning of the server (first CPU) and the client (second CPU, or the same).
srv_pin() { [ "$pin" = none ] || echo numactl --physcpubind="${cpus[0]}"; }
cli_pin() { [ "$pin" = none ] || echo numactl --physcpubind="${cpus[1]:-${cpus[0]}}"; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Next port nobody listens on.
next_port() {
  local i
  for ((i = 0; i < 200; i++)); do
    srv_port=$((srv_port + 1))
    [ $srv_port -gt 60000 ] && srv_port=23001
    port_busy $srv_port || { echo $srv_port; return 0; }
  done
  return 1
}

alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# Stops server $1 listening on port $2: TERM, 5 s, KILL; then waits for the port.
stop_server() {
  local pid=$1 port=$2 i
  # postgres's TERM waits for its sessions; INT is its fast shutdown
  kill -"${4:-TERM}" "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && { kill -KILL "$pid" 2>/dev/null; note "$3: server did not stop in 5 s: killed"; }
  wait "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do port_busy "$port" || break; sleep 0.1; done
}

status_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status" 2>/dev/null; }

# kB of anonymous memory of postgres $1 and its processes (PSS: shared pages split).
pg_anon_kb() {
  local p sum=0 kb
  for p in "$1" $(pgrep -P "$1"); do
    kb=$(sed -n 's/^Pss_Anon:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$p/smaps_rollup" 2>/dev/null)
    sum=$((sum + ${kb:-0}))
  done
  echo "$sum"
}

# The server's memory now: VmRSS, or postgres's sum of anonymous PSS.
srv_rss_kb() { [ "$1" = postgres ] && pg_anon_kb "$2" || status_kb "$2" VmRSS; }

# CPU of postgres $1 in ns: its own, its live processes' and the exited
# backends' it waited for (cutime, cstime), in clock ticks.
pg_cpu_ns() {
  local p sum=0 f hz
  hz=$(getconf CLK_TCK)
  for p in "$1" $(pgrep -P "$1"); do
    # the fields after the command's ")": utime, the 14th of stat, is f[11]
    read -r -a f < <(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null)
    [ ${#f[@]} -gt 15 ] || continue
    sum=$((sum + f[11] + f[12]))
    [ "$p" = "$1" ] && sum=$((sum + f[13] + f[14]))
  done
  echo $((sum * 1000000000 / hz))
}

# Which library the server binary's malloc binds to under LD_PRELOAD=$2 (ld.so's view).
bound_lib() { # $1 binary, $2 preload
  LD_DEBUG=bindings LD_PRELOAD=$2 timeout 10 "$1" --version 2>&1 >/dev/null |
    sed -n "s|.*binding file $1 \[0\] to \([^ ]*\) .*normal symbol \`malloc'.*|\1|p" | head -n 1
}

srv_rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$srv_raw"; }

# CPU time of process $1's threads so far, in ns (schedstat; empty where the
# kernel has none).
srv_cpu_ns() {
  local t ns sum=0
  for t in /proc/"$1"/task/*/schedstat; do
    read -r ns _ <"$t" 2>/dev/null || return
    sum=$((sum + ns))
  done
  echo "$sum"
}

# ms of CPU per 1000 requests: $1 ns before, $2 after, $3 requests.
cpu_per_k() {
  [ -n "$1" ] && [ -n "$2" ] && awk -v d=$(($2 - $1)) -v n="$3" 'BEGIN { printf "%.3f", d / 1e3 / n }'
}

# Servers waiting for their idle reading: "pid port server alloc run" per line.
pending=()

reap_pending() { # $1 = all: wait for every one
  local keep=() p pid port s a r f
  for p in "${pending[@]}"; do
    read -r pid port s a r <<<"$p"
    f=$tmp/idle.$pid
    if [ "${1:-}" = all ]; then
      for ((i = 0; i < (srv_idle + 5) * 10; i++)); do [ -s "$f" ] && break; sleep 0.1; done
    fi
    if [ -s "$f" ]; then
      read -r rss hwm <"$f"
      if [ -n "$rss" ]; then
        srv_rec "$s" "$a" "$r" idle - ok "$rss" "$hwm" ""
      else
        srv_rec "$s" "$a" "$r" idle - error "" "" "server gone before the idle reading"
      fi
      if [ "$s" = postgres ]; then
        stop_server "$pid" "$port" "$s $a" INT
        rm -rf "$pgroot/run.$port"
      else
        stop_server "$pid" "$port" "$s $a"
      fi
    else
      keep+=("$p")
    fi
  done
  pending=("${keep[@]}")
}

# Starts server $1 under allocator index $2 on port $3; sets srv_pid.
start_server() {
  local s=$1 i=$2 port=$3 lib=${srv_libs[$2]} pid k
  # shellcheck disable=SC2046
  case $s in
    redis) $(srv_pin) env ${srv_envs[$i]} ${lib:+LD_PRELOAD=$lib} redis-server --port "$port" \
      --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$tmp/srv.log" 2>&1 </dev/null & ;;
    memcached) $(srv_pin) env ${srv_envs[$i]} ${lib:+LD_PRELOAD=$lib} memcached -m 1024 -t 2 \
      -p "$port" -U 0 -l 127.0.0.1 -u root >"$tmp/srv.log" 2>&1 </dev/null & ;;
    # a copy of the cluster per server (one may still idle while the next
    # runs); setpriv execs (no child of its own): $! is the postmaster
    postgres) cp -a "$pgroot/cluster" "$pgroot/run.$port" || return 1
      $(srv_pin) setpriv --reuid=postgres --regid=postgres --init-groups env ${srv_envs[$i]} \
      ${lib:+LD_PRELOAD=$lib} "$pgbin/postgres" -D "$pgroot/run.$port" -k "$pgroot/run.$port" \
      -p "$port" -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
      >"$tmp/srv.log" 2>&1 </dev/null & ;;
  esac
  pid=$!
  for ((k = 0; k < 100; k++)); do
    alive "$pid" || break
    port_busy "$port" && { srv_pid=$pid; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 1
}

# One run of server $1 under allocator index $2, round $3.
server_run() {
  local s=$1 i=$2 r=$3 a=${srv_names[$2]} lib=${srv_libs[$2]} port pid k size lab hwm peak=0 line
  port=$(next_port) || { note "$s: no free port"; return; }
  if ! start_server "$s" "$i" "$port"; then
    srv_rec "$s" "$a" "$r" start - error "" "" "server did not start: $(tail -n 1 "$tmp/srv.log" | tr '\t' ' ')"
    return
  fi
  pid=$srv_pid
  # the preloaded library is mapped in the server (the binding itself is checked once, by ld.so)
  if [ -n "$lib" ] && ! grep -qF "$(readlink -f "$lib")" "/proc/$pid/maps"; then
    note "$s, $a, run $r: $lib not mapped in the server"
  fi
  case $s in
    redis)
      for k in "${!redis_sizes[@]}"; do
        size=${redis_sizes[$k]}
        lab=$(size_label "$size")
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null
        local cpu0 cpu
        cpu0=$(srv_cpu_ns "$pid")
        # shellcheck disable=SC2046
        timeout -k 2 60 $(cli_pin) redis-benchmark -p "$port" -P 16 -c 50 -n "${redis_reqs[$k]}" \
          -d "$size" -t set,get,lpush,lpop --csv >"$tmp/cli.out" 2>"$tmp/cli.err" </dev/null
        local rc=$?
        cpu=$(cpu_per_k "$cpu0" "$(srv_cpu_ns "$pid")" $((4 * ${redis_reqs[$k]})))
        hwm=$(status_kb "$pid" VmHWM)
        [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ] && peak=$hwm
        for t in set get lpush lpop; do
          local T=${t^^} v
          v=$(sed -n "s/^\"$T\",\"\([0-9.]*\)\".*/\1/p" "$tmp/cli.out" | head -n 1)
          if [ -n "$v" ]; then
            srv_rec "$s" "$a" "$r" "$t" "$lab" ok "$v" "$hwm" "" "$cpu"
          elif [ $rc = 124 ] || [ $rc = 137 ]; then
            srv_rec "$s" "$a" "$r" "$t" "$lab" timeout "" "" "redis-benchmark timed out after 60 s"
          else
            srv_rec "$s" "$a" "$r" "$t" "$lab" error "" "" "no result (rc $rc$(alive "$pid" || echo ', server died')): $(tail -n 1 "$tmp/cli.err" | tr '\t' ' ')"
          fi
        done
      done
      timeout 10 redis-cli -p "$port" flushall >/dev/null 2>&1 ;;
    memcached)
      echo 5 >"/proc/$pid/clear_refs" 2>/dev/null
      local cpu0 cpu
      cpu0=$(srv_cpu_ns "$pid")
      # shellcheck disable=SC2046
      timeout -k 2 60 $(cli_pin) memcaslap -s "127.0.0.1:$port" -F "$tmp/memaslap.cfg" \
        -x "$mc_ops" -T 1 -c 16 >"$tmp/cli.out" 2>"$tmp/cli.err" </dev/null
      local rc=$? v
      cpu=$(cpu_per_k "$cpu0" "$(srv_cpu_ns "$pid")" "$mc_ops")
      hwm=$(status_kb "$pid" VmHWM)
      peak=${hwm:-0}
      v=$(sed -n 's/.*Ops: [0-9]* TPS: \([0-9.]*\) .*/\1/p' "$tmp/cli.out" | tail -n 1)
      if [ -n "$v" ]; then
        srv_rec "$s" "$a" "$r" mixed 64-128k ok "$v" "$hwm" "" "$cpu"
      else
        srv_rec "$s" "$a" "$r" mixed 64-128k "$([ $rc = 124 ] && echo timeout || echo error)" "" "" \
          "no result (rc $rc$(alive "$pid" || echo ', server died')): $(tail -n 1 "$tmp/cli.err" | tr '\t' ' ')"
      fi
      timeout 10 memcflush --servers="127.0.0.1:$port" >/dev/null 2>&1 ;;
    postgres)
      local t cpu0 cpu v n k0
      k0=$(pgrep -c -P "$pid")
      for t in select sort; do
        cpu0=$(pg_cpu_ns "$pid")
        # the peak of the sum over processes, sampled while pgbench runs
        (
          m=0
          while sleep 0.1; do
            kb=$(pg_anon_kb "$pid")
            [ "$kb" -gt "$m" ] && m=$kb && echo "$m" >"$tmp/pgpeak"
          done
        ) &
        local sampler=$!
        # shellcheck disable=SC2046
        timeout -k 2 60 $(cli_pin) pgbench -h 127.0.0.1 -p "$port" -U postgres -n -c 4 -j 1 \
          -T "$pg_secs" $([ $t = select ] && echo -S || echo -f "$tmp/pg_sort.sql") postgres \
          >"$tmp/cli.out" 2>"$tmp/cli.err" </dev/null
        local rc=$?
        # the backends' CPU is the postmaster's once it has waited for them
        for ((k = 0; k < 50; k++)); do [ "$(pgrep -c -P "$pid")" -le "$k0" ] && break; sleep 0.1; done
        kill "$sampler" 2>/dev/null
        wait "$sampler" 2>/dev/null
        hwm=$(cat "$tmp/pgpeak" 2>/dev/null)
        rm -f "$tmp/pgpeak"
        [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ] && peak=$hwm
        v=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$tmp/cli.out" | head -n 1)
        n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$tmp/cli.out")
        if [ -n "$v" ] && [ -n "$n" ] && [ "$n" -gt 0 ]; then
          cpu=$(cpu_per_k "$cpu0" "$(pg_cpu_ns "$pid")" "$n")
          srv_rec "$s" "$a" "$r" tps "$t" ok "$v" "$hwm" "" "$cpu"
        else
          srv_rec "$s" "$a" "$r" tps "$t" "$([ $rc = 124 ] && echo timeout || echo error)" "" "" \
            "no result (rc $rc$(alive "$pid" || echo ', server died')): $(tail -n 1 "$tmp/cli.err" | tr '\t' ' ')"
        fi
      done ;;
  esac
  if ! alive "$pid"; then
    srv_rec "$s" "$a" "$r" idle - error "" "" "server died: $(tail -n 1 "$tmp/srv.log" | tr '\t' ' ')"
    wait "$pid" 2>/dev/null
    return
  fi
  # idle reading in the background; the next run goes on meanwhile
  (
    sleep "$srv_idle"
    echo "$(srv_rss_kb "$s" "$pid") $peak" >"$tmp/idle.$pid.tmp" && mv "$tmp/idle.$pid.tmp" "$tmp/idle.$pid"
  ) &
  pending+=("$pid $port $s $a $r")
}

# One cluster for every run (the tests only read it; each run starts a fresh
# server on it): initdb and pgbench's tables at scale 5, as user postgres
# (the server refuses root), under glibc.
pg_setup() {
  id postgres >/dev/null 2>&1 || { echo "no user postgres" >"$tmp/pg_setup.log"; return 1; }
  pgroot=$(mktemp -d /tmp/hakmem-bench-pg.XXXXXX) && chown postgres "$pgroot" || return 1
  printf '\\set a random(1, 480000)\n%s\n' \
    "SELECT count(*) FROM (SELECT aid FROM pgbench_accounts WHERE aid BETWEEN :a AND :a + 20000 ORDER BY filler DESC, aid) s;" \
    >"$tmp/pg_sort.sql"
  local port
  port=$(next_port) || return 1
  setpriv --reuid=postgres --regid=postgres --init-groups "$pgbin/initdb" -D "$pgroot/cluster" \
    -A trust -U postgres --no-sync >"$tmp/pg_setup.log" 2>&1 || return 1
  srv_libs=("") srv_envs=("")
  start_server postgres 0 "$port" || return 1
  timeout 120 pgbench -h 127.0.0.1 -p "$port" -U postgres -i -s 5 -q postgres >>"$tmp/pg_setup.log" 2>&1
  local rc=$?
  stop_server "$srv_pid" "$port" "postgres setup" INT
  rm -rf "$pgroot/cluster" && mv "$pgroot/run.$port" "$pgroot/cluster" || rc=1
  return $rc
}

servers() {
  local s i r k n m
  srv_raw=$tmp/servers.tsv
  : >"$srv_raw"
  printf 'key\n16 64 1\nvalue\n64 131072 1\ncmd\n0 0.3\n1 0.7\n' >"$tmp/memaslap.cfg"
  ran_servers=()
  for s in "${servers_list[@]}"; do
    case $s in
      redis) bins=(redis-server redis-benchmark redis-cli) ;;
      memcached) bins=(memcached memcaslap memcflush) ;;
      postgres)
        pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
        bins=("${pgbin:-/nonexistent}/postgres" "${pgbin:-/nonexistent}/initdb" pgbench setpriv) ;;
    esac
    local miss=
    for b in "${bins[@]}"; do command -v "$b" >/dev/null || miss+=" $b"; done
    [ -n "$miss" ] && { note "$s: missing$miss (bash .ci/deps installs them): skipped"; continue; }
    if [ "$s" = postgres ] && ! pg_setup; then
      note "postgres: could not create the cluster: $(tail -n 1 "$tmp/pg_setup.log")"
      rm -rf "$pgroot"
      continue
    fi
    # the allocator rows: every preloadable one of run.sh's, glibc preloaded
    # too (Debian's redis links jemalloc), and for redis its own jemalloc
    srv_names=() srv_libs=() srv_envs=()
    for i in "${!names[@]}"; do
      [ -n "${only_for[$i]}" ] && continue
      m=${libs[$i]}
      [ "${names[$i]}" = glibc ] && m=$(find_lib libc.so.6)
      srv_names+=("${names[$i]}") srv_libs+=("$m") srv_envs+=("${envs[$i]}")
      if [ "$s" = redis ] && [ "${names[$i]}" = jemalloc ]; then
        srv_names+=(jemalloc-linked) srv_libs+=("") srv_envs+=("")
      fi
    done
    n=${#srv_names[@]}
    local bin=$(command -v "${bins[0]}")
    for i in "${!srv_names[@]}"; do
      local want=${srv_libs[$i]} got
      got=$(bound_lib "$bin" "$want")
      if [ -z "$want" ]; then
        note "$s, ${srv_names[$i]}: no preload, malloc binds to ${got:-?}"
      elif [ "$(readlink -f "$got")" != "$(readlink -f "$want")" ]; then
        note "$s, ${srv_names[$i]}: malloc binds to ${got:-?}, not $want: the row is not that allocator"
      fi
    done
    echo "run.sh: $s: $n allocators x $srv_runs runs" >&2
    for ((r = 1; r <= srv_runs; r++)); do
      for ((k = 0; k < n; k++)); do
        i=$(((k + r - 1) % n))
        server_run "$s" "$i" "$r"
        printf '[%s] %-10s %-16s run %d: %s\n' "$(date +%T)" "$s" "${srv_names[$i]}" "$r" \
          "$(awk -F'\t' -v s="$s" -v a="${srv_names[$i]}" -v r="$r" '$1==s && $2==a && $3==r && $4!="idle" {printf "%s%s/%s=%s", sep, $4, $5, ($6=="ok" ? int($7) : toupper($6)); sep=" "}' "$srv_raw")" >&2
        reap_pending
      done
    done
    reap_pending all
    [ "$s" = postgres ] && rm -rf "$pgroot"
    ran_servers+=("$s")
  done
}
