# NixOS module services.blixard: the blixard node agent on a NixOS host.
#
# It yields the same systemd unit as packaging/systemd/blixard.service (the
# unit for non-Nix hosts): the same [Unit] ordering, restart policy, state
# directory and hardening; only ExecStart differs, carrying the node's
# flags from the options below instead of /etc/default/blixard. A test
# (nix/module_test.go) evaluates this module against stub inputs and
# compares the two units key by key.
#
#   imports = [ blixard.nixosModules.blixard microvm.nixosModules.host ];
#   services.blixard = {
#     enable = true;
#     package = blixard.packages.x86_64-linux.blixard;
#     nodeId = 2;
#     address = "10.0.0.2";
#     join = [ "10.0.0.1:7003" ];
#     gossipKeyFile = "/run/keys/blixard-gossip";
#     openFirewall = true;
#   };
#
# microvm.nix host integration: with driver = "nix" (the default) the agent
# builds each VM's runner with `nix build` from blixard's VM flake, so the
# module enables flakes, puts Nix on the unit's PATH and lets you pin the
# flake's inputs to the host's own (microvm.overrideInputs, e.g.
# { nixpkgs = "path:${nixpkgs}"; microvm = "path:${microvm}"; }), so VMs
# build from what the host already has. /dev/kvm and /dev/net/tun are
# allowed to the unit; the tun and vhost_net modules are loaded at boot.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.blixard;

  hostPort = port: "${cfg.address}:${toString port}";

  flags =
    [
      "--node-id" (toString cfg.nodeId)
      "--api-addr" (hostPort cfg.apiPort)
      "--raft-addr" (hostPort cfg.raftPort)
      "--gossip-addr" (hostPort cfg.gossipPort)
      "--driver" cfg.driver
      "--accel" cfg.accel
    ]
    ++ lib.optionals (cfg.join != [ ]) [ "--join" (lib.concatStringsSep "," cfg.join) ]
    ++ lib.optionals (cfg.initialCluster != { }) [
      "--initial-cluster"
      (lib.concatStringsSep "," (lib.mapAttrsToList (id: addr: "${id}=${addr}") cfg.initialCluster))
    ]
    ++ lib.optionals (cfg.gossipKeyFile != null) [ "--gossip-key-file" (toString cfg.gossipKeyFile) ]
    ++ lib.optionals (cfg.vcpus != null) [ "--vcpus" (toString cfg.vcpus) ]
    ++ lib.optionals (cfg.memoryMB != null) [ "--memory-mb" (toString cfg.memoryMB) ]
    ++ lib.concatLists (lib.mapAttrsToList (name: ref: [ "--nix-override-input" "${name}=${ref}" ]) cfg.microvm.overrideInputs)
    ++ cfg.extraFlags;
in
{
  options.services.blixard = {
    enable = mkEnableOption "the blixard node agent (distributed microVM orchestrator)";

    package = mkOption {
      type = types.package;
      description = "The blixard package; its bin/blixard runs the agent.";
    };

    nodeId = mkOption {
      type = types.ints.positive;
      description = "This node's id, unique in the cluster (--node-id).";
    };

    address = mkOption {
      type = types.str;
      example = "10.0.0.2";
      description = "The address this node listens on and advertises for its api, Raft and gossip ports.";
    };

    apiPort = mkOption { type = types.port; default = 7001; description = "api port (CLI and other nodes)."; };
    raftPort = mkOption { type = types.port; default = 7002; description = "Raft port."; };
    gossipPort = mkOption { type = types.port; default = 7003; description = "gossip port (TCP and UDP)."; };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/blixard";
      description = "Raft log, snapshots and VM state (--data-dir).";
    };

    join = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "10.0.0.1:7003" ];
      description = "Gossip addresses of existing members to join through (--join). Empty with an empty initialCluster: bootstrap a new single-node cluster.";
    };

    initialCluster = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { "1" = "10.0.0.1:7002"; "2" = "10.0.0.2:7002"; "3" = "10.0.0.3:7002"; };
      description = "Initial members, node id to Raft address (--initial-cluster); the same on every initial member.";
    };

    gossipKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "File with the shared gossip encryption key (--gossip-key-file); keep it out of the Nix store.";
    };

    driver = mkOption {
      type = types.enum [ "nix" "qemu" "fake" ];
      default = "nix";
      description = "VM driver (--driver): nix builds microvm.nix runners; qemu runs qemu directly.";
    };

    accel = mkOption {
      type = types.enum [ "auto" "kvm" "tcg" ];
      default = "auto";
      description = "qemu acceleration (--accel).";
    };

    vcpus = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "vCPUs this node offers to VMs (default: the host's CPUs).";
    };

    memoryMB = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Memory in MiB this node offers to VMs (default: the host's memory).";
    };

    microvm.overrideInputs = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { nixpkgs = "path:/etc/nixpkgs"; };
      description = "Inputs of blixard's VM flake to replace, name to flake reference (--nix-override-input), e.g. the host's own nixpkgs and microvm.nix.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the api, Raft and gossip ports (TCP) and the gossip port (UDP).";
    };

    extraFlags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More flags for `blixard run`.";
    };
  };

  config = mkIf cfg.enable {
    boot.kernelModules = [ "tun" "vhost_net" ];

    nix.settings.experimental-features = mkIf (cfg.driver == "nix") [ "nix-command" "flakes" ];

    networking.firewall = mkIf cfg.openFirewall {
      allowedTCPPorts = [ cfg.apiPort cfg.raftPort cfg.gossipPort ];
      allowedUDPPorts = [ cfg.gossipPort ];
    };

    systemd.tmpfiles.rules = lib.optional (cfg.dataDir != "/var/lib/blixard") "d ${cfg.dataDir} 0700 root root -";

    # Keep in step with packaging/systemd/blixard.service (module_test.go checks).
    systemd.services.blixard = {
      description = "blixard node agent (distributed microVM orchestrator)";
      documentation = [ "https://github.com/blixard/blixard" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      startLimitIntervalSec = 0;
      path = [ pkgs.iptables pkgs.iproute2 pkgs.qemu_kvm ] ++ lib.optional (cfg.driver == "nix") config.nix.package;
      # The file system is read-only to the unit (ProtectSystem=strict), so
      # nix builds go through the daemon; its cache lives in the data dir.
      environment = lib.optionalAttrs (cfg.driver == "nix") {
        NIX_REMOTE = "daemon";
        XDG_CACHE_HOME = "${cfg.dataDir}/.cache";
      };
      serviceConfig = {
        Type = "exec";
        ExecStart = "${cfg.package}/bin/blixard run --data-dir ${cfg.dataDir} --supervisor systemd --log-format json ${lib.escapeShellArgs flags}";
        KillSignal = "SIGTERM";
        TimeoutStopSec = "30s";
        Restart = "always";
        RestartSec = "2s";
        LimitNOFILE = 65536;
        StateDirectory = "blixard";
        StateDirectoryMode = "0700";
        WorkingDirectory = cfg.dataDir;

        CapabilityBoundingSet = [
          "CAP_NET_ADMIN" "CAP_NET_RAW" "CAP_NET_BIND_SERVICE" "CAP_DAC_OVERRIDE" "CAP_DAC_READ_SEARCH"
          "CAP_FOWNER" "CAP_CHOWN" "CAP_KILL" "CAP_SETUID" "CAP_SETGID" "CAP_SYS_RESOURCE"
        ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ReadWritePaths = [ "/run" cfg.dataDir ];
        ProtectHome = true;
        PrivateTmp = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
        DevicePolicy = "closed";
        DeviceAllow = [ "/dev/net/tun rw" "/dev/kvm rw" ];
      };
    };
  };
}
