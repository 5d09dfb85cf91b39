#!/usr/bin/env bash
# A current Python image without a registry: the machine's own CPython (by default the one
# `python3` runs; its own packages left out, pip and setuptools kept) installed under /usr/local
# on the Debian base `local/debian:bookworm`, laid out like the official `python:` image
# (`/usr/local/bin/python3`, `pip`). Imported as `local/python:current` (or the tag given as $1).
# The image trusts the certificate authorities this host trusts (its CA bundle is copied in and
# PIP_CERT names it), so pip reaches PyPI through a TLS-intercepting proxy the host is set up for.
# Needs Debian's mirror from a container (for the libraries CPython links). About a minute.
# Online alternative: `docker pull python:3 && docker tag python:3 local/python:current`.
set -euo pipefail
tag="${1:-local/python:current}"
base="${ENGINE_DEBIAN_BASE:-local/debian:bookworm}"
prefix="${PYTHON_PREFIX:-$(python3 -c 'import sys; print(sys.base_prefix)')}"
version="$("$prefix/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ -d "$prefix/lib/python$version" ] || { echo "no standard library under $prefix (set PYTHON_PREFIX)" >&2; exit 1; }
docker image inspect "$base" >/dev/null 2>&1 || "$(dirname "$0")/import-debian.sh" bookworm "$base"
name="engine-import-python-$$"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
echo "installing CPython's libraries on $base..." >&2
docker run --name "$name" --network bridge -e DEBIAN_FRONTEND=noninteractive "$base" sh -c \
  'apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates libssl3 libffi8 libsqlite3-0 libbz2-1.0 liblzma5 zlib1g libreadline8 libncursesw6 libuuid1 libgdbm6 >/dev/null && rm -rf /var/lib/apt/lists/*' >&2
echo "copying CPython $version from $prefix..." >&2
site="lib/python$version/site-packages"
keep="$(cd "$prefix/$site" && ls -d pip pip-* setuptools setuptools-* _distutils_hack pkg_resources distutils-precedence.pth 2>/dev/null | tr '\n' ' ')"
# The interpreter and its library only: the host's other scripts name the host's prefix.
(cd "$prefix" && tar --numeric-owner --owner=0 --group=0 --exclude "./$site/*" --exclude '__pycache__' \
    -c ./lib ./bin/python3 ./bin/python"$version" $(ls -d ./bin/python ./bin/python3-config 2>/dev/null)) \
  | docker cp - "$name:/usr/local"
# shellcheck disable=SC2086
(cd "$prefix/$site" && tar --numeric-owner --owner=0 --group=0 --exclude '__pycache__' -c $keep) \
  | docker cp - "$name:/usr/local/$site"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  docker cp -L /etc/ssl/certs/ca-certificates.crt "$name:/etc/ssl/certs/ca-certificates.crt"
fi
# `pip` as in the official image (the host's pip script names the host's interpreter).
bin="$(mktemp -d)"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$bin"' EXIT
for tool in pip pip3; do printf '#!/bin/sh\nexec python3 -m pip "$@"\n' > "$bin/$tool"; chmod 755 "$bin/$tool"; done
[ -e "$prefix/bin/python" ] || ln -s python3 "$bin/python"
tar -C "$bin" --numeric-owner --owner=0 --group=0 -c . | docker cp - "$name:/usr/local/bin"
docker commit \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LD_LIBRARY_PATH=/usr/local/lib' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' "$name" "$tag" >/dev/null
echo "imported $tag ($(docker run --rm "$tag" python3 --version), $(docker run --rm "$tag" python3 -m pip --version | cut -d' ' -f1-2))"
