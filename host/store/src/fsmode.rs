//! Private files and directories: kedge's data dirs hold Secrets, bootstrap tokens and keys,
//! so nobody but their owner may read them (data dirs 0700, state and key files 0600, as
//! kubelet keeps its pods dir root-only). Modes are checked and repaired at every start, so a
//! data dir made by an older kedge, or loosened by hand, is closed again, and the log says so.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of directories only their owner may enter.
pub(crate) const PRIVATE_DIR: u32 = 0o700;
/// Mode of files only their owner may read.
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` (and missing parents, each 0700) or, if it exists, narrows its mode to 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)?;
    }
    narrow(dir, PRIVATE_DIR)
}

/// Creates `file` empty with mode 0600 if missing, or narrows an existing one's mode to 0600
/// (before anything else opens it, so no secret lands in a file others can read).
pub fn private_file(file: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => narrow(file, PRIVATE_FILE),
        Err(e) => Err(e),
    }
}

/// Takes away whatever `mode` does not grant (group and other bits), logging a repair.
fn narrow(path: &Path, mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symbolic link; kedge keeps private data only in real files and directories",
            path.display()
        )));
    }
    let have = meta.permissions().mode() & 0o7777;
    if have & !mode == 0 {
        return Ok(());
    }
    let want = have & mode;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
    tracing::warn!(
        path = %path.display(),
        from = format!("{have:04o}"),
        to = format!("{want:04o}"),
        "repaired permissions: others could read kedge's private data"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_private_and_repairs_loose_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        private_dir(&data).unwrap();
        assert_eq!((mode(&dir.path().join("a")), mode(&data)), (0o700, 0o700));
        let state = data.join("state.redb");
        private_file(&state).unwrap();
        assert_eq!(mode(&state), 0o600);

        // What an older kedge left: 0755 dir, 0644 file.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&state, b"kept").unwrap();
        private_dir(&data).unwrap();
        private_file(&state).unwrap();
        assert_eq!((mode(&data), mode(&state)), (0o700, 0o600));
        assert_eq!(std::fs::read(&state).unwrap(), b"kept", "content untouched");
        // Narrower modes are left as they are.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o400)).unwrap();
        private_file(&state).unwrap();
        assert_eq!(mode(&state), 0o400);
    }

    #[test]
    fn refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(private_file(&link).is_err());
    }
}
