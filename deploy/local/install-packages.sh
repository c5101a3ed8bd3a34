#!/bin/sh
# Install the system packages the local appliance runs (redis-server, nginx,
# supervisor) when they are missing. Installing is all this does: `make run`
# runs its own instances from the state folder and never uses, configures or
# stops the packages' system services.
set -eu

have() {
    # nginx and redis-server live in sbin, not on every user's PATH.
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=""
have redis-server || missing="$missing redis-server"
have nginx || missing="$missing nginx"
have supervisord || missing="$missing supervisor"
[ -z "$missing" ] && exit 0

fail() {
    echo "wxrelay: $1" >&2
    echo "wxrelay: install them yourself, as root:  apt-get install -y$missing  (then make run again)" >&2
    exit 1
}

echo "wxrelay: installing the missing system packages:$missing"
command -v apt-get >/dev/null 2>&1 || fail "no apt-get on this machine to install$missing with"
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    fail "installing$missing needs root, and sudo is not installed"
fi
# sudo asks for a password on a terminal; without one it fails, and so do we, clearly.
$as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    || fail "apt-get update failed$([ -n "$as_root" ] && echo ' (is sudo allowed for you here?)')"
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || fail "apt-get install$missing failed"
echo "wxrelay: installed$missing"
