//! The guests are built by `kedge-guests`' build script; this passes their folder on to the
//! kedge package's tests and benches as `KEDGE_WASM_DIR`.

fn main() {
    let dir =
        std::env::var("DEP_KEDGE_GUESTS_WASM_DIR").expect("kedge-guests says where the guests are");
    println!("cargo:rustc-env=KEDGE_WASM_DIR={dir}");
}
