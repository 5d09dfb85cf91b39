#!/usr/bin/env bash
# Offline base image: imports Debian's busybox-static as `local/busybox:1` (or the tag given as $1).
# No registry is needed; the image is a single static binary plus its applet links (about 2 MB).
# Its PATH is the official `busybox` image's, so a tool an image stage puts in /usr/local/bin (or
# /usr/bin, /sbin...) is found by name, as it would be on `busybox:1`.
# Online alternative: `docker pull busybox:1 && docker tag busybox:1 local/busybox:1`.
set -euo pipefail
tag="${1:-local/busybox:1}"
# A static busybox is needed: the image has no libc. Debian's busybox-static installs /bin/busybox.
is_static() { [ -x "$1" ] && ! ldd "$1" >/dev/null 2>&1; }
bb=/bin/busybox
if ! is_static "$bb"; then
  bb="$(command -v busybox || true)"
  if [ -z "$bb" ] || ! is_static "$bb"; then
    echo "installing busybox-static (Debian package)..." >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq busybox-static >/dev/null
    bb=/bin/busybox
  fi
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/workspace" "$root/etc"
cp "$bb" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/workspace:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
tar -C "$root" --numeric-owner --owner=0 --group=0 -c . \
  | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["/bin/sh"]' - "$tag" >/dev/null
echo "imported $tag"
