#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, when missing and when we
# may (root with apt-get). Anything it cannot install is reported, and the
# tests that need it say so when they skip.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
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
