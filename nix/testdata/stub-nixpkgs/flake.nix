# A stand-in for nixpkgs, for tests on machines without nixpkgs (no binary
# cache, no network). It provides only lib.nixosSystem, backed by a tiny
# module system: modules are attrsets or functions of { config, lib, pkgs,
# ... }; their config parts are merged (attrsets recursively, lists
# concatenated, otherwise the later module wins); options are accepted and
# ignored. That is enough to evaluate blixard's vm-flake with the stub
# microvm module, not NixOS.
{
  description = "blixard test stub: nixpkgs.lib.nixosSystem";

  outputs = { self }:
    let
      isDerivation = v: builtins.isAttrs v && (v.type or null) == "derivation";

      merge = a: b:
        if builtins.isAttrs a && builtins.isAttrs b && !isDerivation a && !isDerivation b then
          builtins.listToAttrs (map
            (n: {
              name = n;
              value =
                if a ? ${n} && b ? ${n} then merge a.${n} b.${n}
                else if b ? ${n} then b.${n}
                else a.${n};
            })
            (builtins.attrNames (a // b)))
        else if builtins.isList a && builtins.isList b then a ++ b
        else b;

      lib = {
        mkOption = attrs: attrs // { _type = "option"; };
        # Priorities are not modelled: the later module wins anyway, and
        # blixard's module comes last.
        mkForce = v: v;
        types = {
          attrs = "attrs";
          str = "str";
          bool = "bool";
          int = "int";
          package = "package";
          listOf = t: "listOf";
          nullOr = t: "nullOr";
        };
        escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";
        nixosSystem = { system, modules, specialArgs ? { } }:
          let
            args = specialArgs // { inherit config lib; pkgs = { inherit system; }; };
            configOf = m:
              let r = if builtins.isFunction m then m args else m;
              in if r ? config || r ? options then r.config or { } else removeAttrs r [ "imports" ];
            config = builtins.foldl' merge { } (map configOf modules);
          in
          { inherit config; };
      };
    in
    { inherit lib; };
}
