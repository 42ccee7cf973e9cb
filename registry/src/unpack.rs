//! Applying OCI layers (tar, optionally gzip) to a directory, the way an overlay snapshotter
//! would: whiteouts delete what lower layers made, opaque directories hide their lower
//! contents, and nothing in a layer can write outside the root.
//!
//! Safety rules, since layers come from registries we do not control:
//! - entry names are normalised and refused if they contain `..` or would be empty;
//! - no path component below the root may be a symlink when we write through it, so a layer
//!   cannot plant `etc -> /etc` and then write `etc/passwd` on the host;
//! - symlink targets are stored verbatim (absolute ones included: they are resolved inside
//!   the container's root later) and never followed here;
//! - hard links must point at a regular file already unpacked inside the root.
//!
//! Device nodes and FIFOs are skipped (unpacking runs unprivileged in tests, and a container
//! gets its own `/dev`). Ownership is applied when the process may (root), else left.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use tracing::debug;

use crate::store::{Result, StoreError, io_err, remove_tree};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// A layer with more entries than this is refused rather than unpacked for ever.
const MAX_ENTRIES_PER_LAYER: usize = 1_000_000;

/// Unpacks `layers` (digest, blob path), bottom first, into `dest` (created).
#[doc(hidden)]
pub fn unpack_layers(layers: &[(String, PathBuf)], dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).map_err(io_err(dest))?;
    // Directory modes are applied last: a read-only directory from a lower layer must not stop
    // a higher layer from writing into it.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut chown_ok = true;
    for (digest, path) in layers {
        let file = File::open(path).map_err(io_err(path))?;
        let mut reader = BufReader::new(file);
        let gzip = is_gzip(&mut reader).map_err(io_err(path))?;
        let reader: Box<dyn Read> = if gzip {
            Box::new(GzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let mut layer = Layer {
            root: dest,
            digest,
            created: HashSet::new(),
            dir_modes: &mut dir_modes,
            chown_ok: &mut chown_ok,
        };
        layer.apply(reader)?;
        debug!(layer = %digest, "layer unpacked");
    }
    // Deepest first so a parent's mode never blocks setting a child's.
    dir_modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, mode) in dir_modes {
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn is_gzip(reader: &mut BufReader<File>) -> io::Result<bool> {
    use std::io::BufRead as _;
    let buf = reader.fill_buf()?;
    Ok(buf.len() >= 2 && buf[0] == 0x1f && buf[1] == 0x8b)
}

struct Layer<'a> {
    root: &'a Path,
    digest: &'a str,
    /// Paths (relative) this layer created, which its own opaque markers must not remove.
    created: HashSet<PathBuf>,
    dir_modes: &'a mut Vec<(PathBuf, u32)>,
    chown_ok: &'a mut bool,
}

impl Layer<'_> {
    fn fail(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Unpack {
            layer: self.digest.to_owned(),
            reason: reason.into(),
        }
    }

    fn apply(&mut self, reader: impl Read) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| self.fail(format!("not a tar archive: {e}")))?;
        for (n, entry) in entries.enumerate() {
            if n >= MAX_ENTRIES_PER_LAYER {
                return Err(self.fail(format!("more than {MAX_ENTRIES_PER_LAYER} entries")));
            }
            let entry = entry.map_err(|e| self.fail(format!("bad tar entry: {e}")))?;
            self.entry(entry)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry
            .path()
            .map_err(|e| self.fail(format!("bad entry name: {e}")))?
            .into_owned();
        let Some(rel) = normalise(&raw) else {
            return Err(self.fail(format!("entry {} escapes the root", raw.display())));
        };
        if rel.as_os_str().is_empty() {
            return Ok(()); // the root itself
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();

        if name == OPAQUE_MARKER {
            let dir = self.safe_parent(&rel)?;
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    let child_rel = parent_rel.join(child.file_name());
                    if !self.created.contains(&child_rel) {
                        remove_any(&child.path())?;
                    }
                }
            }
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(self.fail(format!("bad whiteout {}", raw.display())));
            }
            let dir = self.safe_parent(&rel)?;
            remove_any(&dir.join(hidden))?;
            return Ok(());
        }

        let parent = self.safe_parent(&rel)?;
        let target = parent.join(&name);
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let kind = header.entry_type();
        let owner = (header.uid().ok(), header.gid().ok());
        let existing = fs::symlink_metadata(&target).ok();
        // Replace what lower layers had, except a directory staying a directory (merge).
        if let Some(meta) = &existing
            && !(meta.is_dir() && kind.is_dir())
        {
            remove_any(&target)?;
        }
        match kind {
            tar::EntryType::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&target).map_err(io_err(&target))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(0o700 | mode))
                    .map_err(io_err(&target))?;
                self.dir_modes.push((target.clone(), mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut file = File::create(&target).map_err(io_err(&target))?;
                io::copy(&mut entry, &mut file)
                    .map_err(|e| self.fail(format!("reading {}: {e}", raw.display())))?;
                drop(file);
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| self.fail(format!("bad symlink {}: {e}", raw.display())))?
                    .ok_or_else(|| self.fail(format!("symlink {} has no target", raw.display())))?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_err(&target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| self.fail(format!("bad hard link {}: {e}", raw.display())))?
                    .ok_or_else(|| {
                        self.fail(format!("hard link {} has no target", raw.display()))
                    })?;
                let link_rel = normalise(&link).filter(|p| !p.as_os_str().is_empty());
                let Some(link_rel) = link_rel else {
                    return Err(self.fail(format!(
                        "hard link {} -> {} escapes the root",
                        raw.display(),
                        link.display()
                    )));
                };
                let source = self
                    .safe_parent(&link_rel)?
                    .join(link_rel.file_name().unwrap_or_default());
                if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                    return Err(self.fail(format!(
                        "hard link {} -> {}: target is not a file in the image",
                        raw.display(),
                        link.display()
                    )));
                }
                fs::hard_link(&source, &target).map_err(io_err(&target))?;
            }
            other => {
                debug!(entry = %raw.display(), kind = ?other, "entry type skipped");
                return Ok(());
            }
        }
        if *self.chown_ok
            && let (Some(uid), Some(gid)) = owner
            && let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid))
            && let Err(e) = std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
        {
            // Not root: keep our own ownership for the rest of the unpack.
            debug!(error = %e, "cannot apply image ownership; unpacking as the current user");
            *self.chown_ok = false;
        }
        self.created.insert(rel);
        Ok(())
    }

    /// The real directory that will hold `rel`, created as needed, refusing to go through a
    /// symlink or a non-directory.
    fn safe_parent(&self, rel: &Path) -> Result<PathBuf> {
        let mut dir = self.root.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(dir);
        };
        for component in parent.components() {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.fail(format!(
                        "{} goes through the symlink {}",
                        rel.display(),
                        dir.strip_prefix(self.root).unwrap_or(&dir).display()
                    )));
                }
                Ok(_) => {
                    return Err(self.fail(format!(
                        "{}: {} is not a directory",
                        rel.display(),
                        dir.strip_prefix(self.root).unwrap_or(&dir).display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(io_err(&dir))?;
                }
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(dir)
    }
}

/// `./a/b/`, `/a/b` → `a/b`; `None` if a `..` would leave the root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => remove_tree(path),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// Builds a tar from (path, kind) items; gzip if asked.
    enum Item<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
    }

    fn layer(items: &[Item<'_>], gzip: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut h = tar::Header::new_gnu();
            match item {
                Item::Dir(p, mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    builder.append_data(&mut h, p, io::empty()).unwrap();
                }
                Item::File(p, data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    builder.append_data(&mut h, p, *data).unwrap();
                }
                Item::Symlink(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    builder.append_link(&mut h, p, target).unwrap();
                }
                Item::HardLink(p, target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    builder.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        let tar = builder.into_inner().unwrap();
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        } else {
            tar
        }
    }

    /// Writes raw tar bytes with an arbitrary name (the builder refuses `..`).
    fn raw_layer(name: &str, link: Option<(&str, tar::EntryType)>) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        {
            let bytes = &mut h.as_old_mut().name;
            bytes[..name.len()].copy_from_slice(name.as_bytes());
        }
        match link {
            Some((target, kind)) => {
                h.set_entry_type(kind);
                h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            }
            None => h.set_entry_type(tar::EntryType::Regular),
        }
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn unpack(layers: &[Vec<u8>]) -> (tempfile::TempDir, Result<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let p = dir.path().join(format!("layer{i}"));
            fs::write(&p, l).unwrap();
            paths.push((format!("sha256:layer{i}"), p));
        }
        let dest = dir.path().join("root");
        let result = unpack_layers(&paths, &dest).map(|()| dest);
        (dir, result)
    }

    #[test]
    fn layers_apply_with_whiteouts_opaque_dirs_links_and_modes() {
        use Item::*;
        let lower = layer(
            &[
                Dir("bin", 0o755),
                File("bin/tool", b"v1", 0o755),
                Symlink("bin/alias", "/bin/tool"),
                Dir("etc", 0o755),
                File("etc/keep", b"k", 0o644),
                File("etc/gone", b"g", 0o644),
                Dir("etc/conf.d", 0o755),
                File("etc/conf.d/old", b"o", 0o644),
                Dir("ro", 0o555),
                File("ro/file", b"r", 0o444),
            ],
            true,
        );
        let upper = layer(
            &[
                File("bin/tool", b"v2", 0o700),
                HardLink("bin/tool2", "bin/tool"),
                File("etc/.wh.gone", b"", 0o644),
                File("etc/conf.d/new", b"n", 0o644),
                File("etc/conf.d/.wh..wh..opq", b"", 0o644),
                File("ro/added", b"a", 0o644),
                File("./relative/file", b"x", 0o600),
            ],
            false,
        );
        let (_dir, result) = unpack(&[lower, upper]);
        let root = result.unwrap();
        let read = |p: &str| fs::read(root.join(p)).unwrap();
        let mode = |p: &str| {
            fs::symlink_metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };

        assert_eq!(read("bin/tool"), b"v2");
        assert_eq!(mode("bin/tool"), 0o700);
        assert_eq!(read("bin/tool2"), b"v2");
        use std::os::unix::fs::MetadataExt as _;
        let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
        assert_eq!(ino("bin/tool"), ino("bin/tool2"), "hard link");
        assert_eq!(
            fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("/bin/tool"),
            "absolute symlink kept verbatim"
        );
        assert_eq!(read("etc/keep"), b"k");
        assert!(!root.join("etc/gone").exists(), "whiteout");
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(
            !root.join("etc/conf.d/old").exists(),
            "opaque dir hides lower"
        );
        assert_eq!(
            read("etc/conf.d/new"),
            b"n",
            "opaque keeps the same layer's files"
        );
        assert_eq!(read("ro/added"), b"a", "read-only lower dir still written");
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(mode("ro/file"), 0o444);
        assert_eq!(read("relative/file"), b"x");
        crate::store::remove_tree(&root).unwrap();
    }

    #[test]
    fn paths_escaping_the_root_are_refused() {
        // `..` in a name.
        let (dir, result) = unpack(&[raw_layer("../escape", None)]);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("escapes the root"), "{err}");
        assert!(!dir.path().join("escape").exists());

        // A symlink to the outside, then a write through it.
        let outside = tempfile::tempdir().unwrap();
        let evil = layer(
            &[
                Item::Symlink("etc", outside.path().to_str().unwrap()),
                Item::File("etc/passwd", b"pwned", 0o644),
            ],
            false,
        );
        let (_dir, result) = unpack(&[evil]);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!outside.path().join("passwd").exists());

        // A hard link to a host file.
        let (_dir, result) = unpack(&[raw_layer(
            "link",
            Some(("../../../../etc/hostname", tar::EntryType::Link)),
        )]);
        assert!(result.unwrap_err().to_string().contains("escapes the root"));
        let (_dir, result) = unpack(&[raw_layer(
            "link",
            Some(("/etc/hostname", tar::EntryType::Link)),
        )]);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("not a file in the image"), "{err}");

        // A whiteout cannot reach out either.
        let (_dir, result) = unpack(&[raw_layer("a/../../.wh.x", None)]);
        assert!(result.is_err());
    }
}
