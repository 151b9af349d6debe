//! The minimum supported Rust version is true: no dependency that users build (the
//! normal and build dependencies of our published crates, transitively) declares a
//! `rust-version` above the workspace's. `.ci/run` runs this first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// `1.89`, `1.89.0` → (1, 89, 0).
fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn no_dependency_needs_a_newer_rust_than_our_rust_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    // Our published crates (`publish` not `false`), and the MSRV they declare.
    let published: Vec<&str> = members
        .iter()
        .copied()
        .filter(|id| packages[id]["publish"] != Value::Array(vec![]))
        .collect();
    assert!(
        published.len() >= 2,
        "the library and its macros: {published:?}"
    );
    let ours = published
        .iter()
        .map(|id| {
            packages[id]["rust_version"]
                .as_str()
                .expect("rust-version set")
        })
        .map(version)
        .max()
        .unwrap();
    // Everything users build: normal and build edges from the published crates.
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = published.clone();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let built = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].as_str() != Some("dev"));
            if built {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let too_new: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            let rv = p["rust_version"].as_str()?;
            (version(rv) > ours).then(|| format!("{} {} needs {rv}", p["name"], p["version"]))
        })
        .collect();
    eprintln!(
        "rust-version {}.{}: {} crates checked",
        ours.0,
        ours.1,
        seen.len()
    );
    assert!(
        too_new.is_empty(),
        "dependencies above our rust-version {ours:?}: {too_new:?}"
    );
}
