//! The directory on disk: reading PEM files, and replacing files so that a reader (the
//! gateway re-reading `crl.pem`, a simulator loading its certificate) never sees half of one.

use crate::PkiError;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may read a file once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Certificates and the revocation list: 0644.
    Public,
    /// Private keys: 0600 from creation on, never widened.
    Private,
}

/// Whether a write must survive a power cut before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// The CA, the server identity and the revocation list: losing them is not recoverable
    /// by re-running a command.
    Synced,
    /// Vehicle files: a load generator writes thousands, and a lost one is issued again.
    Buffered,
}

/// Replaces `path` with the PEM text `contents` by writing a temporary file beside it and
/// renaming it over, so that the file is always either the old or the new one, whole.
pub(crate) fn replace(
    path: &Path,
    contents: &str,
    access: Access,
    durability: Durability,
) -> Result<(), PkiError> {
    let write_error = |error| PkiError::Write {
        path: path.to_owned(),
        error,
    };
    let temp = temp_path(path);
    let written = write_new(&temp, contents.as_bytes(), access, durability)
        .and_then(|()| fs::rename(&temp, path));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(write_error(error));
    }
    if durability == Durability::Synced {
        // The rename itself is durable only once the directory is.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(write_error)?;
    }
    Ok(())
}

fn write_new(
    path: &Path,
    contents: &[u8],
    access: Access,
    durability: Durability,
) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Public => 0o644,
            Access::Private => 0o600,
        });
    }
    #[cfg(not(unix))]
    let _ = access;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    if durability == Durability::Synced {
        file.sync_all()?;
    }
    Ok(())
}

/// A name no other writer uses: the process id tells processes apart, the counter threads.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// An exclusive lock on a fleet directory, held until dropped. Every change to the directory
/// takes it, so two processes issuing the same VIN or revoking at once cannot interleave
/// their read-modify-write. The operating system drops it if the process dies.
#[derive(Debug)]
pub(crate) struct DirLock {
    _held: File,
}

pub(crate) fn lock(dir: &Path) -> Result<DirLock, PkiError> {
    // The directory itself is the lock: no lock file to leave behind or clean up.
    let file = File::open(dir).map_err(|error| PkiError::Read {
        path: dir.to_owned(),
        error,
    })?;
    file.lock().map_err(|error| PkiError::Write {
        path: dir.to_owned(),
        error,
    })?;
    Ok(DirLock { _held: file })
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|error| PkiError::Write {
        path: dir.to_owned(),
        error,
    })
}

/// The certificates in a PEM file, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    load_all(path)
}

/// The first private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// The certificate revocation lists in a PEM file, in file order.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    load_all(path)
}

fn load_all<T: PemObject>(path: &Path) -> Result<Vec<T>, PkiError> {
    let items = T::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if items.is_empty() {
        return Err(pem_error(path, pem::Error::NoItemsFound));
    }
    Ok(items)
}

fn pem_error(path: &Path, error: pem::Error) -> PkiError {
    match error {
        pem::Error::Io(error) => PkiError::Read {
            path: path.to_owned(),
            error,
        },
        error => PkiError::Pem {
            path: path.to_owned(),
            error,
        },
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|error| PkiError::Read {
        path: path.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_only_the_new_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crl.pem");
        replace(&path, "old", Access::Public, Durability::Synced).expect("first write");
        replace(&path, "new", Access::Public, Durability::Buffered).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["crl.pem"], "no temporary file left behind");
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.key");
        replace(&path, "secret", Access::Private, Durability::Buffered).expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_pem_file_without_the_wanted_item_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.crt");
        fs::write(&path, "no pem here\n").expect("write");
        assert!(matches!(load_certs(&path), Err(PkiError::Pem { .. })));
        assert!(matches!(
            load_crls(&dir.path().join("missing.pem")),
            Err(PkiError::Read { .. })
        ));
    }
}
