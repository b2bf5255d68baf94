# A stand-in for NixOS's module system, for evaluating nix/module.nix on
# machines without nixpkgs (module_test.go). It provides the part of
# nixpkgs' lib the module uses and a small evalModules: option defaults,
# definitions merged attribute by attribute (lists concatenated, otherwise
# the later definition wins; priorities are not modelled), and mkIf pushed
# down into attribute sets as NixOS does, so `config = mkIf cfg.enable
# { ... }` does not recurse. Types are recorded, not checked.
#
#   nix-instantiate --eval --strict --json eval.nix \
#     --arg module ../../module.nix --arg userConfig '{ ... }'
{ module, userConfig, pkgs ? { iptables = "/stub/iptables"; iproute2 = "/stub/iproute2"; qemu_kvm = "/stub/qemu"; } }:
let
  lib = rec {
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = what: mkOption { type = types.bool; default = false; description = "Whether to enable ${what}."; };
    mkIf = cond: content: { _type = "if"; inherit cond content; };
    types =
      let t = name: { inherit name; }; in {
        bool = t "bool";
        str = t "str";
        int = t "int";
        port = t "port";
        path = t "path";
        package = t "package";
        ints.positive = t "positive int";
        listOf = elem: t "listOf";
        attrsOf = elem: t "attrsOf";
        nullOr = elem: t "nullOr";
        enum = values: t "enum" // { inherit values; };
      };
    optional = cond: v: if cond then [ v ] else [ ];
    optionals = cond: l: if cond then l else [ ];
    optionalAttrs = cond: a: if cond then a else { };
    concatStringsSep = builtins.concatStringsSep;
    concatLists = builtins.concatLists;
    mapAttrsToList = f: a: map (n: f n a.${n}) (builtins.attrNames a);
    # As nixpkgs: quote only when the argument is not made of safe characters.
    escapeShellArg = arg:
      let s = toString arg; in
      if builtins.match "[[:alnum:],._+:@%/-]+" s != null then s
      else "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] s}'";
    escapeShellArgs = l: concatStringsSep " " (map escapeShellArg l);
  };

  isOption = v: builtins.isAttrs v && (v._type or null) == "option";
  isIf = v: builtins.isAttrs v && (v._type or null) == "if";
  isPlain = v: builtins.isAttrs v && !(v ? _type) && !(v ? outPath);

  # The defaults of an option tree (options without a default are left out).
  defaults = opts: builtins.listToAttrs (builtins.concatMap
    (n:
      let o = opts.${n}; in
      if isOption o then (if o ? default then [{ name = n; value = o.default; }] else [ ])
      else [{ name = n; value = defaults o; }])
    (builtins.attrNames opts));

  # mkIf cond { a = x; } becomes { a = mkIf cond x; }, without forcing cond.
  pushDown = v:
    if isIf v then
      let c = pushDown v.content; in
      if isPlain c then builtins.mapAttrs (_: x: lib.mkIf v.cond x) c else v
    else v;

  # A leaf definition with its conditions evaluated: a list of 0 or 1 values.
  resolve = v: if isIf v then (if v.cond then resolve v.content else [ ]) else [ v ];

  merge = defs:
    let ds = map pushDown defs; in
    if ds != [ ] && builtins.all isPlain ds then
      let names = builtins.attrNames (builtins.foldl' (a: d: a // d) { } ds); in
      builtins.listToAttrs (map
        (n: { name = n; value = merge (builtins.concatMap (d: if d ? ${n} then [ d.${n} ] else [ ]) ds); })
        names)
    else
      let vals = builtins.concatMap resolve ds; in
      if vals == [ ] then null
      else if builtins.all builtins.isList vals then builtins.concatLists vals
      else builtins.elemAt vals (builtins.length vals - 1);

  result = import module { inherit config lib pkgs; };
  config = merge [ (defaults result.options) userConfig result.config ];
in
{
  service = config.systemd.services.blixard or null;
  firewall = config.networking.firewall or null;
  kernelModules = config.boot.kernelModules or null;
  nixFeatures = config.nix.settings.experimental-features or null;
  tmpfiles = config.systemd.tmpfiles.rules or null;
}
