#!/usr/bin/env bash
# nix-deps.sh — install Debian's nix-bin for the nix driver's tests (microvm/nix, nix/).
#
# Single-user Nix as root: no daemon, no build users, no sandbox. The tests pass
# --extra-experimental-features 'nix-command flakes' --option build-users-group ''
# --option sandbox false themselves, and use stub flake inputs (nix/testdata), so nothing is
# fetched from a binary cache or GitHub. Idempotent: a rerun with nix present returns at once.
set -euo pipefail

log() { echo "nix-deps: $*" >&2; }

if ! command -v nix >/dev/null 2>&1; then
	if [[ $(id -u) != 0 ]]; then
		log "nix is missing and installing it needs root"
		exit 1
	fi
	log "installing nix-bin"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y --no-install-recommends nix-bin >/dev/null ||
		{ apt-get update >/dev/null && apt-get install -y --no-install-recommends nix-bin >/dev/null; }
fi

# The store and state dirs nix expects (the package's postinst makes them too when it runs
# under systemd; containers may lack them).
if [[ $(id -u) == 0 ]]; then
	mkdir -p /nix/store /nix/var/nix/profiles /nix/var/nix/gcroots /nix/var/nix/db
	chmod 1775 /nix/store
fi
log "$(nix --version)"
