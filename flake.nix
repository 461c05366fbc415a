{
  description = "bottle: reproducible builder and runner of sandboxed containers for AI coding agents";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" ] (system:
      let
        pkgs = import nixpkgs { inherit system; };
        cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
        bottle = pkgs.rustPlatform.buildRustPackage {
          pname = cargoToml.package.name;
          version = cargoToml.package.version;
          src = pkgs.lib.cleanSource ./.;
          # Every dependency is pinned by Cargo.lock; no vendor hash to keep in step.
          cargoLock.lockFile = ./Cargo.lock;
          # The integration tests need a Docker engine and a registry, which the
          # Nix sandbox does not have; `checks.unit` runs the pure tests.
          doCheck = false;
          meta = {
            description = cargoToml.package.description;
            license = pkgs.lib.licenses.asl20;
            mainProgram = "bottle";
          };
        };
      in
      {
        packages.default = bottle;
        packages.bottle = bottle;

        apps.default = {
          type = "app";
          program = "${bottle}/bin/bottle";
        };

        checks.unit = bottle.overrideAttrs (old: {
          pname = "bottle-unit-tests";
          doCheck = true;
          checkPhase = ''
            runHook preCheck
            cargo test --offline --lib
            runHook postCheck
          '';
        });

        devShells.default = pkgs.mkShell {
          inputsFrom = [ bottle ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            cargo-nextest
            docker-client
            docker-distribution
            busybox
          ];
        };
      });
}
