#!/usr/bin/env bash
# Installs the Debian packages goop needs, when missing and when we may (root
# with apt-get), without recommended packages. Anything it cannot install is
# reported, and the tests that need it say so when they skip.
#
#   tools/sysdeps.sh runtime   what `make run` needs: a C compiler and GMP's
#                              headers, because libp2p pulls in fastecdsa, which
#                              pip builds from source
#   tools/sysdeps.sh test      that, plus what `make test` needs: headless
#                              Chromium (browser tests), iproute2 (network
#                              namespaces for the LAN tests), Prometheus (the
#                              metrics test scrapes a real one)
#
# Runs before pip (the Makefile calls it first).
set -u
what=${1:-test}
need=()
# fastecdsa (a libp2p dependency) compiles against gmp.h.
if ! dpkg -s libgmp-dev >/dev/null 2>&1 && [ ! -e /usr/include/gmp.h ] \
    && [ -z "$(find /usr/include -name gmp.h -print -quit 2>/dev/null)" ]; then
    need+=(libgmp-dev)
fi
command -v gcc >/dev/null 2>&1 || need+=(gcc)
if [ "$what" = test ]; then
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    # The metrics test scrapes a rendezvous with a real Prometheus.
    command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
    # The scale-out tests run a real Redis.
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "sysdeps: installing ${need[*]} (Debian packages, no recommends)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null \
        && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || echo "sysdeps: could not install ${need[*]}"
elif [ "$what" = runtime ]; then
    echo "sysdeps: missing ${need[*]}; as root: apt-get install --no-install-recommends ${need[*]}"
    echo "sysdeps: (pip builds libp2p's fastecdsa from source: it needs gcc and GMP's headers)"
else
    echo "sysdeps: missing ${need[*]} (not root or no apt-get); tests needing them will skip"
fi
exit 0
