# A stand-in for microvm.nix, for tests on machines without nixpkgs. Its
# nixosModules.microvm sets microvm.declaredRunner to a derivation built by
# /bin/sh (the build PATH is empty) with the two scripts microvm.nix's runner
# has, shaped like its qemu runner:
#
#   bin/microvm-run       exec qemu on the virtio-mmio microvm machine with
#                         the evaluated options: console on stdout, QMP on
#                         <hostName>.sock in the working directory (the VM
#                         state dir), the TAP interface and volumes. The
#                         kernel and initrd come from blixard.spec (NixOS
#                         would build them). $BLIXARD_STUB_QEMU replaces the
#                         qemu binary (tests run a fake process there).
#   bin/microvm-shutdown  press the ACPI power button over QMP (perl, which
#                         Debian always has, in place of socat) and wait for
#                         qemu to close the socket. Left out when the spec
#                         has the label stub-no-shutdown (runners of some
#                         hypervisors have none).
#
# Every value is shell-quoted by escapeShellArg; nothing is interpolated
# into the scripts unquoted.
{
  description = "blixard test stub: microvm.nix's nixosModules.microvm";

  outputs = { self }: {
    nixosModules.microvm = { config, lib, pkgs, ... }:
      let
        cfg = config.microvm;
        spec = config.blixard.spec;
        q = lib.escapeShellArg;
        opt = s: builtins.replaceStrings [ "," ] [ ",," ] s;
        socket = "${config.networking.hostName}.sock";
        withShutdown = !((spec.Labels or { }) ? "stub-no-shutdown");
        qemuArgs =
          [
            "-name" (opt config.networking.hostName)
            "-M" "microvm,accel=tcg,acpi=on,mem-merge=on,pcie=off,pic=off,pit=off,rtc=on,usb=off"
            "-m" "${toString cfg.mem}M"
            "-smp" (toString cfg.vcpu)
            "-nodefaults" "-no-user-config" "-no-reboot"
            "-chardev" "stdio,id=stdio,signal=off"
            "-serial" "chardev:stdio"
            "-device" "virtio-rng-device"
            "-cpu" "max"
            "-device" "i8042"
            "-kernel" spec.Kernel
          ]
          ++ (if (spec.Initrd or "") != "" then [ "-initrd" spec.Initrd ] else [ ])
          ++ [
            "-append" (builtins.concatStringsSep " " ([ "console=ttyS0" "reboot=t" "panic=-1" ] ++ config.boot.kernelParams))
            "-nographic"
            "-qmp" "unix:${opt socket},server=on,wait=off"
          ]
          ++ builtins.concatLists (builtins.genList
            (i:
              let v = builtins.elemAt cfg.volumes i; id = "vd${toString i}"; in [
                "-drive" "id=${id},format=raw,file=${opt v.image},if=none,read-only=${if v.readOnly then "on" else "off"}"
                "-device" "virtio-blk-device,drive=${id}"
              ])
            (builtins.length cfg.volumes))
          ++ builtins.concatLists (builtins.genList
            (i:
              let n = builtins.elemAt cfg.interfaces i; id = "net${toString i}"; in [
                "-netdev" "tap,id=${id},ifname=${n.id},script=no,downscript=no"
                "-device" "virtio-net-device,netdev=${id},mac=${n.mac}"
              ])
            (builtins.length cfg.interfaces));

        run = ''
          #!/bin/sh
          # microvm-run (blixard test stub)
          exec "''${BLIXARD_STUB_QEMU:-qemu-system-x86_64}" ${builtins.concatStringsSep " " (map q qemuArgs)}
        '';

        shutdown = ''
          #!/usr/bin/perl
          # microvm-shutdown (blixard test stub): ACPI power button over QMP,
          # then wait until qemu closes the connection.
          use strict;
          use IO::Socket::UNIX;
          my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => ${q socket}) or die "connect: $!\n";
          print $s qq({"execute":"qmp_capabilities"}\n);
          print $s qq({"execute":"system_powerdown"}\n);
          $s->flush;
          while (<$s>) {}
          exit 0;
        '';
      in
      {
        microvm.declaredRunner = derivation {
          name = "microvm-${cfg.hypervisor}-${config.networking.hostName}";
          system = pkgs.system;
          builder = "/bin/sh";
          inherit run shutdown withShutdown;
          passAsFile = [ "run" "shutdown" ];
          args = [
            "-c"
            ''
              set -e
              /bin/mkdir -p "$out/bin"
              /bin/cp "$runPath" "$out/bin/microvm-run"
              /bin/chmod 0555 "$out/bin/microvm-run"
              if [ -n "$withShutdown" ]; then
                /bin/cp "$shutdownPath" "$out/bin/microvm-shutdown"
                /bin/chmod 0555 "$out/bin/microvm-shutdown"
              fi
            ''
          ];
        };
      };
  };
}
