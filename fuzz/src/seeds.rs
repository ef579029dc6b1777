//! Every seed and every saved crash input through its target, without AFL: the harness works,
//! and crashes that were fixed stay fixed.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file() && e.file_name() != "README.md")
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("readable input");
            (e.path().display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn seeds_and_regressions_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, target) in crate::TARGETS {
        let seeds = inputs(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds for {name}");
        let regressions = inputs(&root.join("regressions").join(name));
        for (path, bytes) in seeds.iter().chain(&regressions) {
            if std::panic::catch_unwind(|| target(bytes)).is_err() {
                panic!("{name}: {path} fails");
            }
        }
        println!(
            "{name}: {} seeds, {} regressions",
            seeds.len(),
            regressions.len()
        );
    }
}

#[test]
fn every_target_has_a_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in crate::TARGETS {
        assert!(
            root.join("src/bin").join(format!("{name}.rs")).is_file(),
            "{name}"
        );
    }
}
