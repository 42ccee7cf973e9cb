//! The fixed WIT at `wit/plugin.wit` names a function `list`, which is a WIT keyword: every
//! WIT parser (wit-bindgen's and wasmtime's) rejects it unless written `%list`. The `%` is
//! only escaping — the component-level name stays `list` — so this script copies the WIT to
//! OUT_DIR with that one identifier escaped. Once the source file says `%list` this is a no-op.

use std::{env, fs, path::PathBuf};

fn main() {
    let src = PathBuf::from("wit/plugin.wit");
    println!("cargo::rerun-if-changed={}", src.display());
    let text = fs::read_to_string(&src).expect("read wit/plugin.wit");
    let escaped: String = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("list:") {
                let indent = &line[..line.len() - trimmed.len()];
                format!("{indent}%{trimmed}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("wit");
    fs::create_dir_all(&out).expect("create OUT_DIR/wit");
    fs::write(out.join("plugin.wit"), escaped).expect("write escaped WIT");
}
