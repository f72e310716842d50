# Shared by scripts/check-sid.sh and scripts/check-cuda-build.sh (sourced, not run): a Debian chroot that holds a
# copy of this checkout and this machine's Node.js. Callers set chroot_dir, root (the checkout) and OUT first.

# Builds the chroot with mmdebstrap unless it exists: chroot_create SUITE COMPONENTS PACKAGES(comma separated).
chroot_create() {
  local suite=$1 components=$2 pkgs=$3
  [ -x "$chroot_dir/usr/bin/apt-get" ] && return 0
  command -v mmdebstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
  echo "chroot: creating a Debian $suite chroot in $chroot_dir (mmdebstrap)"
  # Check-Valid-Until off: a mirror snapshot's Release file may be past its validity date.
  mmdebstrap --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' --components="$components" --include="$pkgs" \
    "$suite" "$chroot_dir" http://deb.debian.org/debian > "$OUT/mmdebstrap.log" 2>&1 ||
    { tail -20 "$OUT/mmdebstrap.log" >&2; rm -rf "$chroot_dir"; return 1; }
}

# Node.js, npm and Node's headers (for node-gyp) from this machine, DNS and the CA bundle (npm through a
# TLS-inspecting proxy needs its certificate); then this checkout's files (tracked and untracked, not ignored) into
# /work/torch-dpo of the chroot, replacing what was there.
chroot_populate() {
  local node_bin npm_dir node_inc
  node_bin=$(readlink -f "$(command -v node)")
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  node_inc=$(dirname "$(dirname "$node_bin")")/include/node
  mkdir -p "$chroot_dir/opt/node/bin" "$chroot_dir/opt/node/lib/node_modules" "$chroot_dir/opt/node/include"
  cp "$node_bin" "$chroot_dir/opt/node/bin/node"
  rm -rf "$chroot_dir/opt/node/lib/node_modules/npm" "$chroot_dir/opt/node/include/node"
  cp -r "$npm_dir" "$chroot_dir/opt/node/lib/node_modules/npm"
  [ -d "$node_inc" ] && cp -r "$node_inc" "$chroot_dir/opt/node/include/node"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$chroot_dir/opt/node/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$chroot_dir/opt/node/bin/npx"
  cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
  cp "${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}" "$chroot_dir/etc/ssl/host-ca.crt" 2>/dev/null || true
  work="$chroot_dir/work/torch-dpo"
  rm -rf "$work"; mkdir -p "$work"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c '[ -e "{}" ] && printf "%s\0" "{}"' |
    tar --null -T - -cf -) | tar -xf - -C "$work"
}

# proc, sys, dev (+ pts, shm) inside the chroot, unmounted when the calling script exits.
chroot_mount() {
  chroot_mounts=(proc sys dev dev/pts dev/shm)
  trap chroot_unmount EXIT
  mount -t proc proc "$chroot_dir/proc"; mount --rbind /sys "$chroot_dir/sys"; mount --rbind /dev "$chroot_dir/dev"
  mount -t devpts devpts "$chroot_dir/dev/pts" 2>/dev/null || true; mount -t tmpfs tmpfs "$chroot_dir/dev/shm" 2>/dev/null || true
}
chroot_unmount() { for ((i = ${#chroot_mounts[@]} - 1; i >= 0; i--)); do umount -l "$chroot_dir/${chroot_mounts[$i]}" 2>/dev/null || true; done; }

# Runs a bash command in /work/torch-dpo of the chroot with a clean environment (plus the caller's INSIDE_ENV words).
inside() {
  chroot "$chroot_dir" /usr/bin/env -i HOME=/root PATH=/opt/node/bin:/usr/local/bin:/usr/bin:/bin CI="${CI:-}" \
    NODE_EXTRA_CA_CERTS=/etc/ssl/host-ca.crt npm_config_cafile=/etc/ssl/host-ca.crt npm_config_nodedir=/opt/node \
    ${INSIDE_ENV:-} bash -c "cd /work/torch-dpo && $1"
}
