//! Records how the harness was built, for the report: the profile's optimisation level, debug
//! info, LTO and codegen units, and the openraft version the lock file resolved. Both sides of
//! the comparison are in this one binary, so they share these settings.
//!
//! Cargo tells a build script the profile's name, opt-level and debug setting (`PROFILE`,
//! `OPT_LEVEL`, `DEBUG`) but not LTO or codegen units: those are taken from a
//! `CARGO_PROFILE_<NAME>_LTO` / `_CODEGEN_UNITS` environment override if set, else from the
//! workspace manifest's `[profile.<name>]` section, else cargo's documented default. Profile
//! settings in `.cargo/config.toml` files are not read (this workspace has none).

use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let root = Path::new(&manifest_dir).join("..");
    let manifest = root.join("Cargo.toml");
    let lock = root.join("Cargo.lock");
    println!("cargo::rerun-if-changed={}", manifest.display());
    println!("cargo::rerun-if-changed={}", lock.display());
    println!("cargo::rerun-if-changed=build.rs");

    // `PROFILE` is `release` for the release profile (and profiles inheriting from it), `debug`
    // otherwise; the manifest calls the latter `dev`.
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    let section = if profile == "debug" { "dev" } else { profile.as_str() };
    let upper = section.to_uppercase().replace('-', "_");
    for key in ["LTO", "CODEGEN_UNITS"] {
        println!("cargo::rerun-if-env-changed=CARGO_PROFILE_{upper}_{key}");
    }
    let manifest_text = std::fs::read_to_string(&manifest).unwrap_or_default();
    let setting = |key: &str, env_key: &str, default: &str| -> String {
        if let Ok(v) = std::env::var(format!("CARGO_PROFILE_{upper}_{env_key}")) {
            return format!("{v} (environment)");
        }
        match profile_setting(&manifest_text, section, key) {
            Some(v) => format!("{v} (Cargo.toml [profile.{section}])"),
            None => format!("{default} (cargo's default)"),
        }
    };
    let release = section != "dev";
    let lto = setting("lto", "LTO", "false");
    let cgu = setting("codegen-units", "CODEGEN_UNITS", if release { "16" } else { "256" });
    let opt = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "?".into());
    let debug = std::env::var("DEBUG").unwrap_or_else(|_| "?".into());
    println!("cargo::rustc-env=RAFTKIT_BENCH_PROFILE={section}");
    println!("cargo::rustc-env=RAFTKIT_BENCH_OPT_LEVEL={opt}");
    println!("cargo::rustc-env=RAFTKIT_BENCH_DEBUG={debug}");
    println!("cargo::rustc-env=RAFTKIT_BENCH_LTO={lto}");
    println!("cargo::rustc-env=RAFTKIT_BENCH_CODEGEN_UNITS={cgu}");

    let lock_text = std::fs::read_to_string(&lock).unwrap_or_default();
    let openraft = locked_version(&lock_text, "openraft").unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=RAFTKIT_BENCH_OPENRAFT_VERSION={openraft}");
}

/// `key = value` in the manifest's `[profile.<section>]` table (not its per-package
/// sub-tables), with quotes removed.
fn profile_setting(manifest: &str, section: &str, key: &str) -> Option<String> {
    let header = format!("[profile.{section}]");
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                let v = v.split('#').next().unwrap_or("").trim().trim_matches('"');
                return Some(v.to_string());
            }
        }
    }
    None
}

/// The version of package `name` in a `Cargo.lock` (the first, if several).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(v.trim_matches('"').to_string());
        }
    }
    None
}
