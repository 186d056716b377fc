#!/usr/bin/env bash
# numa_vm: hakmem's NUMA checks on two real nodes, on a machine with one.
# Boots Debian's own kernel in QEMU (TCG: no usable KVM here) with two NUMA
# nodes, and runs tests/numa_vm/guest.c, linked statically with
# build/libhakmem.a, as the VM's /init; the recipe and its measurements are in
# ../shared/research/NUMA-VM.md.
#
# When missing, installs qemu-system-x86 and cpio (as root), downloads the
# kernel package once and keeps an uncompressed vmlinux in build/numa_vm/
# (booted through PVH: about 5 s instead of 10-13 s for the compressed
# kernel). Prints the guest's lines, the timings, and last the guest's
# "N passed, N failed". Exits 0 only when the guest reported 0 failed; 77
# with "SKIP: why" when this machine cannot run the VM; 1 with "FAIL: why".
#
# Environment: NUMA_VM_SMP=2 (CPUs, split evenly over the two nodes),
# NUMA_VM_TIMEOUT=90 (seconds for the VM), NUMA_VM_LIB=build/libhakmem.a
# (the allocator archive to test), NUMA_VM_KEEP=1 (keep the run directory).
set -u
cd "$(dirname "$0")/.." || exit 2
repo=$PWD
cache=$repo/build/numa_vm
lib=${NUMA_VM_LIB:-$repo/build/libhakmem.a}
smp=${NUMA_VM_SMP:-2}
limit=${NUMA_VM_TIMEOUT:-90}
t0=${EPOCHREALTIME/./}

skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*"
  exit 1
}
# Seconds since the script started, from microseconds.
since() {
  local us=$((${EPOCHREALTIME/./} - ${1:-$t0}))
  printf '%d.%02d' $((us / 1000000)) $((us % 1000000 / 10000))
}
is_root() { [ "$(id -u)" = 0 ]; }

[ "$(uname -m)" = x86_64 ] || skip "the VM runs Debian's amd64 kernel; this is $(uname -m)"
case $smp in 2 | 4 | 6 | 8) ;; *) fail "NUMA_VM_SMP=$smp: expected 2, 4, 6 or 8 (CPUs split over two nodes)" ;; esac
[ -f "$lib" ] || fail "$lib is not built (run make)"
mkdir -p "$cache" || fail "cannot create $cache"

# Package installs and the kernel download happen once, under a lock, even
# when two test runs share this tree.
exec 9>"$cache/.lock"
flock 9

# ---- tools: qemu, cpio, and static libraries for the guest ----
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
command -v xz >/dev/null || missing+=(xz-utils)
command -v readelf >/dev/null || missing+=(binutils)
command -v gcc >/dev/null || missing+=(gcc)
for pair in libc.a:libc6-dev libnuma.a:libnuma-dev liburing.a:liburing-dev; do
  # gcc prints the bare name back when it does not find the file
  [ "$(gcc -print-file-name="${pair%%:*}" 2>/dev/null)" != "${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  is_root || skip "not root, and ${missing[*]} not installed (apt-get install ${missing[*]})"
  echo "numa_vm: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_log=$cache/apt.log
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
    # stale or absent package lists: refresh once
    if ! apt-get update -qq >>"$apt_log" 2>&1 ||
      ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; then
      skip "cannot install ${missing[*]} (no network to Debian's mirror?): $(tail -n 1 "$apt_log")"
    fi
  fi
fi

# ---- kernel: Debian's, with an uncompressed vmlinux for PVH boot ----
kernel_ok() { [ -s "$cache/vmlinux" ] || [ -s "$cache/vmlinuz" ]; }
fetch_kernel() {
  local kpkg dl vmlinuz config opt off
  kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
  kpkg=$(kpkg)
  if [ -z "$kpkg" ] && is_root; then
    apt-get update -qq >/dev/null 2>&1
    kpkg=$(kpkg)
  fi
  [ -n "$kpkg" ] || skip "apt-cache names no kernel package for linux-image-amd64 (no package lists; run apt-get update)"
  echo "numa_vm: downloading $kpkg (about 70 MB, once)"
  dl=$(mktemp -d "$cache/dl.XXXXXX") || fail "mktemp failed"
  # the name changes as Debian updates the kernel: looked up, never hard-coded
  if ! (cd "$dl" && apt-get download "$kpkg") >"$dl/log" 2>&1; then
    skip "cannot download $kpkg from Debian's mirror: $(grep -v unsandboxed "$dl/log" | tail -n 1)"
  fi
  dpkg-deb --fsys-tarfile "$dl"/*.deb | tar -x -C "$dl" ./boot || fail "cannot unpack $kpkg"
  rm -f "$dl"/*.deb
  vmlinuz=$(find "$dl/boot" -name 'vmlinuz-*' | head -n 1)
  config=$(find "$dl/boot" -name 'config-*' | head -n 1)
  if [ ! -s "$vmlinuz" ] || [ ! -s "$config" ]; then fail "$kpkg has no vmlinuz or config in /boot"; fi
  # all built in: the initramfs holds no modules
  for opt in NUMA ACPI_NUMA X86_64_ACPI_NUMA MIGRATION BLK_DEV_INITRD RD_GZIP DEVTMPFS SERIAL_8250_CONSOLE; do
    grep -qx "CONFIG_$opt=y" "$config" || skip "$kpkg is not built with CONFIG_$opt=y"
  done
  # The compressed kernel spends 5-6 s of TCG time unpacking itself: take
  # the ELF out of its xz payload once, and boot that through PVH.
  if grep -qx CONFIG_PVH=y "$config"; then
    # shellcheck disable=SC2013 # byte offsets, one word each
    for off in $(LC_ALL=C grep -abo $'\xfd7zXZ' "$vmlinuz" | cut -d: -f1); do
      tail -c +$((off + 1)) "$vmlinuz" | xz -dc >"$dl/vmlinux" 2>/dev/null # trailing bytes: xz complains, the ELF is whole
      if [ "$(head -c 4 "$dl/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
        readelf -n "$dl/vmlinux" 2>/dev/null | grep -q 'note type: (0x00000012)\|0x00000012'; then
        mv "$dl/vmlinux" "$cache/vmlinux"
        break
      fi
    done
  fi
  if [ ! -s "$cache/vmlinux" ]; then
    echo "numa_vm: no PVH vmlinux could be taken out of $kpkg: booting the compressed kernel (slower)"
    cp "$vmlinuz" "$cache/vmlinuz"
  fi
  echo "$kpkg" >"$cache/kernel-package"
  rm -rf "$dl"
}
if ! kernel_ok; then
  t_fetch=${EPOCHREALTIME/./}
  fetch_kernel
  echo "numa_vm: kernel ready in $(since "$t_fetch") s"
fi
flock -u 9
kernel=$cache/vmlinux
[ -s "$kernel" ] || kernel=$cache/vmlinuz

# ---- guest: the static test program as /init in an initramfs ----
run=$(mktemp -d "$cache/run.XXXXXX") || fail "mktemp failed"
[ "${NUMA_VM_KEEP:-0}" = 1 ] || trap 'rm -rf "$run"' EXIT
mkdir -p "$run/root/dev" "$run/root/proc" "$run/root/sys"
# the TCG CPU is a plain x86-64: no -march=native
if ! gcc -std=gnu11 -O2 -Wall -Wextra -Werror -Iuapi -Itests -static -pthread \
  -o "$run/root/init" tests/numa_vm/guest.c "$lib" -lnuma -luring -lpthread >"$run/cc.log" 2>&1; then
  cat "$run/cc.log"
  fail "the guest program does not build: $(grep -m1 -E 'error|undefined' "$run/cc.log" | cut -c1-200)"
fi
(cd "$run/root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) |
  gzip -1 -n >"$run/initrd" || fail "cannot build the initramfs"

# ---- the VM ----
half=$((smp / 2))
cpus0=0 cpus1=1
[ "$half" -gt 1 ] && cpus0=0-$((half - 1)) cpus1=$half-$((smp - 1))
echo "numa_vm: booting $(cat "$cache/kernel-package" 2>/dev/null) ($(basename "$kernel")), $smp CPUs, nodes 0 (cpus $cpus0) and 1 (cpus $cpus1)"
t_boot=${EPOCHREALTIME/./}
timeout -k 5 "$limit" qemu-system-x86_64 -machine pc -accel tcg -m 1024 -smp "$smp" \
  -kernel "$kernel" -initrd "$run/initrd" -append "console=ttyS0 panic=-1 quiet" \
  -nographic -no-reboot -nodefaults -serial stdio \
  -object memory-backend-ram,id=m0,size=512M -object memory-backend-ram,id=m1,size=512M \
  -numa node,nodeid=0,cpus="$cpus0",memdev=m0 -numa node,nodeid=1,cpus="$cpus1",memdev=m1 \
  </dev/null 2>"$run/qemu.err" |
  while IFS= read -r line || [ -n "$line" ]; do
    # strip carriage returns and SeaBIOS's terminal escapes; stamp each line
    line=$(printf '%s' "$line" | sed -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[c]//g')
    printf '%s\t%s\n' "$(since "$t_boot")" "$line"
  done >"$run/console"
rc=("${PIPESTATUS[@]}")
t_exit=$(since "$t_boot")

# the guest's lines, without the firmware's
sed -n '/numa_vm guest:/,$p' "$run/console" | cut -f2- | grep -v '^$'
first=$(grep -m1 'numa_vm guest:' "$run/console" | cut -f1)
summary=$(cut -f2- "$run/console" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
echo "numa_vm: qemu exit status ${rc[0]}; guest started at ${first:-?} s, qemu exited at $t_exit s after start; $(since) s in all"
if [ "${rc[0]}" = 124 ] || [ "${rc[0]}" = 137 ]; then
  tail -n 20 "$run/console" | cut -f2-
  fail "the VM did not power off within ${limit}s"
fi
if [ -z "$summary" ]; then
  cut -f2- "$run/console" | tail -n 20
  cat "$run/qemu.err"
  fail "the guest printed no summary (qemu status ${rc[0]}: $(head -c 200 "$run/qemu.err" | tr '\n' ' '))"
fi
echo "$summary"
case $summary in *" 0 failed") exit 0 ;; *) exit 1 ;; esac
