//! The engine stays free of IO and of clocks: it imports neither tokio nor quinn, reads no
//! clock (time is passed in) and draws no thread-local randomness (every random choice comes
//! from its seeded generator), so it can be driven by a simulated network on a virtual clock,
//! deterministically by seed.
//!
//! Unit tests (everything after a file's `#[cfg(test)]`) and the simulated network (`sim/`, a
//! test harness) may take a real instant as the origin of their virtual clock.

use std::path::Path;

/// What the engine's source must not contain, with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the engine does no IO and starts no task"),
    ("quinn", "the engine does no IO"),
    (
        "Instant::now",
        "time is passed in (the driver reads the one clock)",
    ),
    ("SystemTime", "time is passed in"),
    (
        "rand::random",
        "random choices come from the engine's seeded generator",
    ),
    (
        "thread_rng",
        "random choices come from the engine's seeded generator",
    ),
    (
        "rand::rng()",
        "random choices come from the engine's seeded generator",
    ),
    ("std::thread", "the engine starts no thread"),
    ("std::net::UdpSocket", "the engine does no IO"),
    (
        "socket2",
        "the engine does no IO (multicast sockets live in the transport)",
    ),
    (
        "SystemRandom",
        "channel secrets come from the driver's generator (multicast `SecretSource`)",
    ),
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the engine's folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "sim") {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_engine_imports_no_io_no_clock_and_no_thread_randomness() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut files = Vec::new();
    sources(&engine, &mut files);
    assert!(
        files.len() > 10,
        "the engine's sources were not found: {files:?}"
    );
    // The multicast channel protocol is part of the engine and held to the same rule.
    for part in [
        "sender.rs",
        "receiver.rs",
        "seal.rs",
        "repair.rs",
        "header.rs",
    ] {
        assert!(
            files
                .iter()
                .any(|f| f.ends_with(Path::new("multicast").join(part))),
            "engine/multicast/{part} is not checked: {files:?}"
        );
    }
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        let product = text.lines().take_while(|l| l.trim() != "#[cfg(test)]");
        for (number, line) in product.enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (word, why) in FORBIDDEN {
                if code.contains(word) {
                    violations.push(format!(
                        "{}:{}: `{word}` ({why}): {}",
                        file.display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
