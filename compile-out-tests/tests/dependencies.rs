//! With `enable` off, the library pulls in no HTTP, TLS or async runtime crate: none is in
//! this crate's lockfile, which Cargo resolves from the features actually requested.

const FORBIDDEN: &[&str] = &[
    "reqwest",
    "hyper",
    "hyper-util",
    "h2",
    "http",
    "rustls",
    "rustls-platform-verifier",
    "ring",
    "aws-lc-rs",
    "openssl",
    "native-tls",
    "tokio",
    "mio",
    "tracing",
    "tracing-subscriber",
    "arrow-array",
    "arrow-ipc",
    "bytes",
    "libc",
];

fn locked_packages() -> Vec<String> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("the compile-out crate's lockfile is committed");
    lock.lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|n| n.trim_end_matches('"').to_string())
        .collect()
}

#[test]
fn no_http_tls_or_runtime_crate_is_locked() {
    let packages = locked_packages();
    assert!(
        packages.iter().any(|p| p == "openlayer-trace"),
        "{packages:?}"
    );
    assert!(packages.iter().any(|p| p == "serde_json"), "{packages:?}");
    let found: Vec<&String> = packages
        .iter()
        .filter(|p| FORBIDDEN.contains(&p.as_str()))
        .collect();
    assert!(found.is_empty(), "compiled-out build locks {found:?}");
}

/// The same, as Cargo builds it: the normal dependencies of the tree, from `cargo tree`
/// (offline, from the lockfile).
#[test]
fn no_http_tls_or_runtime_crate_is_built() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args([
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"openlayer-trace"), "{tree}");
    let found: Vec<&&str> = crates.iter().filter(|c| FORBIDDEN.contains(c)).collect();
    assert!(
        found.is_empty(),
        "compiled-out build depends on {found:?}:\n{tree}"
    );
}
