#!/usr/bin/env bash
# nix-deps.sh — install Debian's nix-bin for the nix driver's tests (microvm/nix, nix/).
#
# Single-user Nix: no daemon, no build users, no sandbox; the store belongs to the user who
# runs the tests. The tests pass --extra-experimental-features 'nix-command flakes'
# --option build-users-group '' --option sandbox false --option substituters '' themselves
# and use the stub flake inputs in nix/testdata, so nothing is fetched from a binary cache or
# GitHub. Idempotent: a rerun with nix present and the store writable only prints the version.
set -euo pipefail

log() { echo "nix-deps: $*" >&2; }
sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo

if ! command -v nix >/dev/null 2>&1; then
	log "installing nix-bin"
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get install -y -qq --no-install-recommends nix-bin >/dev/null ||
		{ $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends nix-bin >/dev/null; }
fi

# The store and state dirs single-user nix writes (the package's postinst makes them only
# under systemd; containers may lack them).
if [[ ! -w /nix/store || ! -w /nix/var/nix/db ]] || [[ ! -d /nix/var/nix/gcroots ]]; then
	$sudo mkdir -p /nix/store /nix/var/nix/profiles /nix/var/nix/gcroots /nix/var/nix/db
	[[ -z $sudo ]] || $sudo chown -R "$(id -u):$(id -g)" /nix
fi
log "$(nix --version)"
