# The static flake of one blixard microVM. blixard copies this file and
# flake.lock next to a vm.json (the VM's spec as data) and builds
#   nixosConfigurations.<name>.config.microvm.declaredRunner
# Every value of the spec reaches Nix through builtins.fromJSON: nothing the
# user typed is ever part of Nix source, so no name, label or kernel
# parameter can change what this file means.
#
# vm.json (written by microvm/nix; unknown fields are ignored):
#   name        VM name; the nixosConfigurations attribute and the host name
#   system      Nix system, default "x86_64-linux"
#   hypervisor  microvm.nix hypervisor ("qemu", "cloud-hypervisor", "firecracker")
#   vcpus, memoryMB
#   kernelParams  list of strings, appended verbatim to boot.kernelParams
#   volumes     list of { image, sizeMB, mountPoint (null = not mounted), readOnly, serial }
#   shares      list of { tag, source, mountPoint, proto, readOnly }
#   network     null, or { tap, mac, ip, gateway, prefixLength }: one TAP interface and
#               the routed address as the kernel's ip= parameter
#   flake       "" or a flake reference of the guest (blixard vm create --flake): its
#               nixosModules.<flakeModule> (default "default") joins the NixOS
#               configuration. The reference is read with builtins.getFlake, so the
#               build runs with --impure. blixard's options win over the guest's for what
#               the cluster decided (hypervisor, vcpu, mem, interfaces, host name, socket).
#   flakeModule the module's name in the guest flake's nixosModules
#   spec        the whole driver spec, exposed as the read-only option blixard.spec
#
# Inputs are pinned in flake.lock; a node overrides them with
# --override-input nixpkgs <ref> / --override-input microvm <ref>.
{
  description = "blixard microVM: vm.json mapped to microvm.nix options";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    microvm = {
      url = "github:microvm-nix/microvm.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, microvm }:
    let
      vm = builtins.fromJSON (builtins.readFile ./vm.json);
      net = vm.network or null;
      hasNet = net != null && (net.tap or "") != "";
      prefixLength = if hasNet then net.prefixLength or 32 else 32;

      # The dotted netmask of a prefix length, for the kernel's ip= syntax.
      pow2 = n: if n == 0 then 1 else 2 * pow2 (n - 1);
      octet = bits: 256 - pow2 (8 - (if bits > 8 then 8 else if bits < 0 then 0 else bits));
      netmask = builtins.concatStringsSep "." (map (i: toString (octet (prefixLength - 8 * i))) [ 0 1 2 3 ]);

      # ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>
      ipParam = "ip=${net.ip}::${net.gateway or ""}:${netmask}:${vm.name}:eth0:off";

      guestModules =
        if (vm.flake or "") != "" then
          [ (builtins.getFlake vm.flake).nixosModules.${vm.flakeModule or "default"} ]
        else [ ];

      blixardModule = { lib, ... }: {
        options.blixard.spec = lib.mkOption {
          type = lib.types.attrs;
          readOnly = true;
          description = "The blixard VM spec this system was generated from (vm.json).";
        };
        config = {
          blixard.spec = vm.spec or vm;
          networking.hostName = lib.mkForce vm.name;
          boot.kernelParams =
            (if hasNet && (net.ip or "") != "" then [ ipParam ] else [ ])
            ++ (vm.kernelParams or [ ]);
          microvm = {
            hypervisor = lib.mkForce (vm.hypervisor or "qemu");
            vcpu = lib.mkForce (vm.vcpus or 1);
            mem = lib.mkForce (vm.memoryMB or 512);
            # The driver waits for this socket in the VM's state dir.
            socket = lib.mkForce "${vm.name}.sock";
            interfaces = lib.mkForce
              (if hasNet then [{ type = "tap"; id = net.tap; mac = net.mac; }] else [ ]);
            volumes = map
              (v: {
                image = v.image;
                size = v.sizeMB or 0;
                mountPoint = v.mountPoint or null;
                readOnly = v.readOnly or false;
                serial = v.serial or null;
                autoCreate = (v.sizeMB or 0) > 0;
              })
              (vm.volumes or [ ]);
            shares = map
              (s: {
                tag = s.tag;
                source = s.source;
                mountPoint = s.mountPoint;
                readOnly = s.readOnly or false;
              } // (if (s.proto or "") != "" then { proto = s.proto; } else { }))
              (vm.shares or [ ]);
          };
        };
      };
    in
    {
      nixosModules.blixard = blixardModule;

      nixosConfigurations.${vm.name} = nixpkgs.lib.nixosSystem {
        system = vm.system or "x86_64-linux";
        modules = [ microvm.nixosModules.microvm ] ++ guestModules ++ [ blixardModule ];
      };
    };
}
