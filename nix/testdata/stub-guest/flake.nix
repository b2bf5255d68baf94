# A guest flake as `blixard vm create --flake` names one: its
# nixosModules.default joins the VM's NixOS configuration. It tries to set
# what the cluster decides (vcpu, host name) to check that blixard's values
# win, and adds a kernel parameter to check that it was loaded.
{
  description = "blixard test stub: a microvm.nix guest module";

  outputs = { self }: {
    nixosModules.default = { ... }: {
      boot.kernelParams = [ "guest-module=default" ];
      networking.hostName = "guest-says-so";
      microvm.vcpu = 16;
    };
    nixosModules.web = { ... }: {
      boot.kernelParams = [ "guest-module=web" ];
    };
  };
}
