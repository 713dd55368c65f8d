//! Reading and writing the PEM files of a CA folder and of a node identity; private keys get
//! file mode 0600 on Unix.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{Identity, MeshCa};
use crate::error::Error;

impl MeshCa {
    /// Loads a CA from a folder written by [`MeshCa::save`].
    ///
    /// Reads `ca.pem`, and `ca.key` if the folder has one: with the key the CA can issue
    /// certificates, without it the CA can only be trusted.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let cert_path = dir.join(Self::CERT_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_path = dir.join(Self::KEY_FILE);
        match fs::read_to_string(&key_path) {
            Ok(key_pem) => Self::from_pem_with_key(&cert_pem, &key_pem)
                .map_err(|e| in_files(e, &[&cert_path, &key_path])),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::from_pem(&cert_pem).map_err(|e| in_files(e, &[&cert_path]))
            }
            Err(source) => Err(Error::Io {
                path: key_path,
                source,
            }),
        }
    }

    /// Loads a CA certificate (trust only, no key) from one PEM file, such as a copy of
    /// `ca.pem` handed to the machines that run nodes.
    pub fn load_cert(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        Self::from_pem(&read_file(path)?).map_err(|e| in_files(e, &[path]))
    }

    /// Writes the CA into folder `dir` (created if missing): `ca.pem`, and `ca.key` (file
    /// mode 0600 on Unix) if this CA holds its key.
    ///
    /// Refuses to overwrite an existing `ca.pem` or `ca.key`: replacing a mesh CA makes every
    /// certificate it issued useless, so that must be a deliberate act (delete the files
    /// first).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), Error> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let cert_path = dir.join(Self::CERT_FILE);
        let key_path = dir.join(Self::KEY_FILE);
        for path in [&cert_path, &key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(Error::Io {
                    path: path.clone(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a mesh CA already exists here; refusing to overwrite it",
                    ),
                });
            }
        }
        if let Some(key) = &self.key {
            write_file(&key_path, key.serialize_pem().as_bytes(), true, false)?;
        }
        write_file(&cert_path, self.cert_pem().as_bytes(), false, false)
    }
}

impl Identity {
    /// Loads an identity from a certificate PEM file and a private key PEM file.
    pub fn load(cert_path: impl AsRef<Path>, key_path: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| in_files(e, &[cert_path, key_path]))
    }

    /// Writes the certificate chain and private key as PEM files, creating missing parent
    /// folders and replacing existing files. The key file gets mode 0600 on Unix.
    ///
    /// Each file is replaced in one step (written beside it, then renamed over it), key first:
    /// a node watching the files (`shoal serve`) reads either file whole, and reloads once
    /// the certificate matches the key.
    pub fn save(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<(), Error> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        for path in [cert_path, key_path] {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|source| Error::Io {
                    path: parent.to_owned(),
                    source,
                })?;
            }
        }
        write_file(key_path, self.key_pem().as_bytes(), true, true)?;
        write_file(cert_path, self.cert_pem().as_bytes(), false, true)
    }
}

fn read_file(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path`. `secret` files get mode 0600 on Unix. With `overwrite`, an
/// existing file is replaced in one step ([`replace_file`]); without it, fails if `path`
/// exists.
fn write_file(path: &Path, contents: &[u8], secret: bool, overwrite: bool) -> Result<(), Error> {
    if overwrite {
        return replace_file(path, contents, secret);
    }
    write_new(path, contents, secret)
}

/// Replaces `path` with `contents` in one step: writes a new file beside it and renames it
/// over `path`, so a reader (a node watching its certificate files) sees the old file or the
/// new one, never half of one.
pub(crate) fn replace_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), Error> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let staging = path.with_file_name(format!(
        ".{}.{}.new",
        name.as_deref().unwrap_or("shoal"),
        std::process::id()
    ));
    let _ = fs::remove_file(&staging);
    let written = write_new(&staging, contents, secret).and_then(|()| {
        fs::rename(&staging, path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
    });
    if written.is_err() {
        let _ = fs::remove_file(&staging);
    }
    written
}

/// Creates `path` (which must not exist) with `contents`; `secret` files get mode 0600.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), Error> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err)?;
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Adds the file names to an identity error, so the user knows which files are wrong.
fn in_files(err: Error, paths: &[&Path]) -> Error {
    match err {
        Error::Identity(msg) => {
            let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            Error::Identity(format!("{msg} (in {})", files.join(", ")))
        }
        other => other,
    }
}
