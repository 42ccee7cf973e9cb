//! Fuzz targets for the registry client's parsers of user and network input (see
//! fuzz/driver.rs): image references, pull secrets, `registries.yaml` and layer tarballs.

#[path = "../../fuzz/driver.rs"]
mod driver;

use driver::{run, target, text};
use kedge_registry::reference::Reference;
use kedge_registry::{Keyring, RegistriesConfig};
use std::path::Path;

#[test]
fn fuzz_image_reference() {
    let dict = &[
        "/",
        ":",
        "@",
        "sha256:",
        "docker.io/",
        "library/",
        "localhost:5000/",
        "[::1]:5000/",
        "-",
        "_",
        "__",
        ".",
        "latest",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ];
    run(target("image_reference", 1024, dict), |b| {
        let s = text(b);
        let Ok(r) = Reference::parse(&s) else {
            return false;
        };
        // Round trip: the normalised form kedge stores and prints parses to itself.
        let printed = r.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again.to_string(), printed, "{s:?}");
        assert_eq!(again.registry(), r.registry());
        assert_eq!(again.repository(), r.repository());
        assert_eq!(again.tag(), r.tag());
        assert_eq!(again.digest(), r.digest());
        kedge_registry::reference::default_pull_policy(&r);
        true
    });
}

#[test]
fn fuzz_dockerconfigjson() {
    let dict = &[
        "\"auths\"",
        "\"auth\"",
        "\"username\"",
        "\"password\"",
        "\"https://\"",
        "\"*.\"",
        "\"index.docker.io/v1/\"",
        "\"dXNlcjpwYXNz\"",
        "\"Og==\"",
        "\"identitytoken\"",
        "{",
        "}",
        ":",
        ",",
    ];
    let refs: Vec<Reference> = [
        "nginx",
        "registry.example.com:5000/a/b:1",
        "quay.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "sub.example.com/app",
    ]
    .iter()
    .map(|r| Reference::parse(r).unwrap())
    .collect();
    run(target("dockerconfigjson", 16 << 10, dict), |b| {
        let mut ok = false;
        for k in [
            Keyring::from_dockerconfigjson(b),
            Keyring::from_dockercfg(b),
        ]
        .into_iter()
        .flatten()
        {
            ok = true;
            for r in &refs {
                k.lookup(r);
            }
        }
        ok
    });
}

#[test]
fn fuzz_registries_yaml() {
    let dict = &[
        "mirrors:",
        "configs:",
        "endpoint:",
        "rewrite:",
        "auth:",
        "tls:",
        "insecure_skip_verify: true",
        "\n  ",
        "\n    - ",
        "\"docker.io\":",
        "\"*\":",
        "\"^(.*)$\": \"x/$1\"",
        "&a",
        "*a",
        "- ",
        ": ",
    ];
    run(target("registries_yaml", 16 << 10, dict), |b| {
        RegistriesConfig::parse(&text(b)).is_ok()
    });
}

/// A directory under the system temp dir, removed (if possible) when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        make_writable(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(m) = std::fs::symlink_metadata(p)
        && m.is_dir()
    {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

#[test]
fn fuzz_tar_layer() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dict = &[
        "../",
        "/",
        "./",
        ".wh.",
        ".wh..wh..opq",
        "etc",
        "0000755\0",
        "0000644\0",
        "ustar\0",
        "ustar  \0",
        "././@LongLink",
        "\x000",
        "1",
        "2",
        "5",
        "L",
        "K",
        "x",
        "g",
    ];
    let base = std::env::temp_dir().join(format!("kedge-fuzz-tar-{}", std::process::id()));
    run(target("tar_layer", 64 << 10, dict), |b| {
        let dir = Scratch(base.join(N.fetch_add(1, Ordering::Relaxed).to_string()));
        std::fs::create_dir_all(dir.0.join("outside")).unwrap();
        let blob = dir.0.join("layer.tar");
        std::fs::write(&blob, b).unwrap();
        // The same bytes as two layers: the second one meets what the first one made
        // (symlinks planted to redirect writes, whiteouts of existing paths).
        let layers = [
            ("sha256:a".to_string(), blob.clone()),
            ("sha256:b".to_string(), blob),
        ];
        let root = dir.0.join("root");
        let ok = kedge_registry::unpack_layers(&layers, &root).is_ok();
        // Nothing was written outside the root, whatever the layer said.
        let mut names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert!(
            names
                .iter()
                .all(|n| ["layer.tar", "outside", "root"].contains(&n.as_str())),
            "written outside the root: {names:?}"
        );
        assert_eq!(
            std::fs::read_dir(dir.0.join("outside")).unwrap().count(),
            0,
            "wrote through a link"
        );
        ok
    });
    let _ = std::fs::remove_dir_all(&base);
}
