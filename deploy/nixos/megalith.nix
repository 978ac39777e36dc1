# NixOS module: services.megalith runs `megalith serve`.
#
#   imports = [ ./deploy/nixos/megalith.nix ];
#   services.megalith = {
#     enable = true;
#     package = pkgs.callPackage ./megalith-package.nix { };  # the binary, built from this repository
#     listen = "127.0.0.1:7777";
#     relays = [ "wss://relay.damus.io" "wss://nos.lol" ];
#     limits = { max_connections = 20000; events_per_second = 50; };
#     logLevel = "info";
#   };
#
# Every setting of `settings` is a key of docs/config.md; the options below
# set the common ones.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.megalith;
  toml = pkgs.formats.toml { };
  configFile = toml.generate "megalith.toml" (lib.recursiveUpdate {
    data = cfg.dataDir;
    listen = cfg.listen;
    durability = cfg.durability;
    trusted_proxies = cfg.trustedProxies;
    limits = cfg.limits;
    feed = { relays = cfg.relays; };
  } cfg.settings);
in
{
  options.services.megalith = {
    enable = lib.mkEnableOption "the Megalith Nostr relay";

    package = lib.mkOption {
      type = lib.types.package;
      description = "The package that provides bin/megalith.";
    };

    dataDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/megalith";
      description = "The store's data directory (a StateDirectory when under /var/lib).";
    };

    listen = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1:7777";
      description = "HOST:PORT the relay listens on.";
    };

    durability = lib.mkOption {
      type = lib.types.enum [ "always" "batch" "never" ];
      default = "always";
      description = "When an acknowledged event is on disk.";
    };

    relays = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Where feed jobs look for contact and relay lists; empty means the built-in public relays.";
    };

    trustedProxies = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "127.0.0.1" ];
      description = "Reverse proxies whose X-Forwarded-For names the client.";
    };

    limits = lib.mkOption {
      type = toml.type;
      default = { };
      example = { max_connections = 20000; events_per_second = 50; };
      description = "The [limits] table (docs/config.md); unset keys keep their defaults.";
    };

    logLevel = lib.mkOption {
      type = lib.types.str;
      default = "info";
      description = "off, error, warn, info, debug, trace, or target=level directives.";
    };

    settings = lib.mkOption {
      type = toml.type;
      default = { };
      description = "Any other settings of docs/config.md, merged over the options above.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the listen port in the firewall (only for a relay without a proxy in front).";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.megalith = {
      description = "Megalith Nostr relay";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = {
        Type = "exec";
        ExecStart = "${cfg.package}/bin/megalith serve --config ${configFile} --log ${cfg.logLevel}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        TimeoutStopSec = 120;
        Restart = "on-failure";
        DynamicUser = true;
        StateDirectory = "megalith";
        ReadWritePaths = [ cfg.dataDir ];
        LimitNOFILE = 65536;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        NoNewPrivileges = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        SystemCallFilter = [ "@system-service" ];
        CapabilityBoundingSet = "";
      };
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [
      (lib.toInt (lib.last (lib.splitString ":" cfg.listen)))
    ];
  };
}
