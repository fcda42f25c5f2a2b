//! Local path policy: where `download_file` writes and which file `upload_file`
//! shares. The controller asks the file system through [`LocalFiles`], so tests
//! can answer with a fake and the real client with [`OsFiles`].

use std::io;
use std::path::{Path, PathBuf};

/// What a path names (symlinks followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Dir,
    Other,
}

/// The file-system questions the controller asks.
pub trait LocalFiles {
    /// What `path` names, or why it cannot be looked at.
    fn kind(&self, path: &Path) -> io::Result<PathKind>;
    /// The absolute path without symlinks, if it can be resolved.
    fn canonical(&self, path: &Path) -> Option<PathBuf>;

    fn is_file(&self, path: &Path) -> bool {
        matches!(self.kind(path), Ok(PathKind::File))
    }
    fn is_dir(&self, path: &Path) -> bool {
        matches!(self.kind(path), Ok(PathKind::Dir))
    }
    fn exists(&self, path: &Path) -> bool {
        self.kind(path).is_ok()
    }
}

/// The real file system.
pub struct OsFiles;

impl LocalFiles for OsFiles {
    fn kind(&self, path: &Path) -> io::Result<PathKind> {
        let meta = std::fs::metadata(path)?;
        Ok(if meta.is_file() {
            PathKind::File
        } else if meta.is_dir() {
            PathKind::Dir
        } else {
            PathKind::Other
        })
    }

    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

/// Where `download_file` writes: an existing directory keeps the file's name;
/// otherwise a new file path whose parent directory exists.
pub fn resolve_dest(files: &dyn LocalFiles, dest: &Path, name: &str) -> Result<PathBuf, String> {
    if dest.as_os_str().is_empty() {
        return Err("empty destination path".into());
    }
    let target = if files.is_dir(dest) {
        if name.contains('/') || name == ".." || name == "." || name.is_empty() {
            return Err(format!("cannot use file name {name:?} in a directory"));
        }
        dest.join(name)
    } else {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !files.is_dir(parent) {
            return Err(format!(
                "destination directory {} does not exist",
                parent.display()
            ));
        }
        dest.to_path_buf()
    };
    if files.exists(&target) {
        return Err(format!("{} already exists", target.display()));
    }
    Ok(target)
}

/// The file `upload_file <path>` shares: a regular file, as an absolute path
/// whose file name is UTF-8. The error is the reason for the user.
pub fn upload_source(files: &dyn LocalFiles, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    match files.kind(p) {
        Err(e) => return Err(format!("{path}: {}", io_reason(&e))),
        Ok(PathKind::File) => {}
        Ok(_) => return Err(format!("{path}: not a regular file")),
    }
    let abs = files.canonical(p).unwrap_or_else(|| p.to_path_buf());
    if abs.file_name().and_then(|n| n.to_str()).is_none() {
        return Err(format!("{path}: file name is not valid UTF-8"));
    }
    Ok(abs)
}

/// A short reason for an I/O error (without the "(os error N)" suffix).
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fs = &OsFiles;
        assert_eq!(resolve_dest(fs, d, "f.bin").unwrap(), d.join("f.bin"));
        assert_eq!(
            resolve_dest(fs, &d.join("new.bin"), "f.bin").unwrap(),
            d.join("new.bin")
        );
        std::fs::write(d.join("f.bin"), b"x").unwrap();
        assert!(resolve_dest(fs, d, "f.bin")
            .unwrap_err()
            .contains("already exists"));
        assert!(resolve_dest(fs, &d.join("f.bin"), "g")
            .unwrap_err()
            .contains("already exists"));
        assert!(resolve_dest(fs, &d.join("nope/x"), "g")
            .unwrap_err()
            .contains("does not exist"));
        assert!(resolve_dest(fs, d, "../x").is_err());
        assert_eq!(
            resolve_dest(fs, Path::new(""), "x").unwrap_err(),
            "empty destination path"
        );
    }

    #[test]
    fn upload_sources() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fs = &OsFiles;
        let f = d.join("f.bin");
        std::fs::write(&f, b"x").unwrap();
        let canon = std::fs::canonicalize(&f).unwrap();
        assert_eq!(upload_source(fs, f.to_str().unwrap()).unwrap(), canon);
        let dir_str = d.to_str().unwrap();
        assert_eq!(
            upload_source(fs, dir_str).unwrap_err(),
            format!("{dir_str}: not a regular file")
        );
        let missing = d.join("missing");
        let missing = missing.to_str().unwrap();
        assert_eq!(
            upload_source(fs, missing).unwrap_err(),
            format!("{missing}: no such file or directory")
        );
    }
}
