#!/usr/bin/env bash
# Installs the Debian packages goop and its tests need, when missing and when
# we may (root with apt-get). Anything it cannot install is reported, and the
# tests that need it say so when they skip.
#
# Runs before pip (the Makefile's .deps rule calls it first): libp2p pulls in
# fastecdsa, which is built from source and needs gcc and GMP's headers.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# fastecdsa (a libp2p dependency) compiles against gmp.h.
if ! dpkg -s libgmp-dev >/dev/null 2>&1 && [ ! -e /usr/include/gmp.h ] \
    && [ -z "$(find /usr/include -name gmp.h -print -quit 2>/dev/null)" ]; then
    need+=(libgmp-dev)
fi
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# The LAN tests build network namespaces with `ip netns`.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "sysdeps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
        || echo "sysdeps: could not install ${need[*]}; tests needing them will skip"
else
    echo "sysdeps: missing ${need[*]} (not root or no apt-get); tests needing them will skip"
fi
exit 0
