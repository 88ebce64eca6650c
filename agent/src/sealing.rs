//! Client-side encryption of artifacts: the [age](https://age-encryption.org/v1) format,
//! X25519 recipients, payload in ChaCha20-Poly1305 STREAM chunks of 64 KiB (the `age` crate;
//! nothing here is cryptography of its own).
//!
//! The keys are age identity files (`age-keygen` writes them, as does
//! `warden-agent key generate`), configured on agents only: `[encryption] key_files`. The
//! first one seals new backups; all of them open old ones, which is how keys rotate. An
//! artifact's manifest records the id of the key that sealed it, its public half
//! (`age1...`): naming a key gives nothing away, and an artifact whose key is missing is
//! refused before anything is restored, saying which key it needs.
//!
//! A sealed file is still an ordinary age file: `age -d -i KEY dump.zst.age | zstd -d |
//! pg_restore` restores it without Warden.

use std::fs;
use std::io::{self, Read, Write};
use std::iter;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use warden_shared::manifest::{ENCRYPTION_SCHEME, Encryption};

use crate::error::{AgentError, AgentResult};

/// One key: an X25519 identity and its id, the public key.
#[derive(Clone)]
pub struct Key {
    id: String,
    recipient: Recipient,
    identity: Identity,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identity is the secret: only the id is ever shown.
        f.debug_struct("Key").field("id", &self.id).finish()
    }
}

impl Key {
    /// The key's id: its public key, `age1...`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What a manifest records about files sealed with this key.
    pub fn encryption(&self) -> Encryption {
        Encryption {
            scheme: ENCRYPTION_SCHEME.to_owned(),
            key_id: self.id.clone(),
        }
    }

    /// Wraps `output` so that everything written to it is sealed; the caller must call
    /// `finish` on the returned writer, or the file ends truncated (and will not open).
    pub fn seal<W: Write>(&self, output: W) -> io::Result<age::stream::StreamWriter<W>> {
        let encryptor =
            age::Encryptor::with_recipients(iter::once(&self.recipient as &dyn age::Recipient))
                .map_err(io::Error::other)?;
        encryptor.wrap_output(output)
    }

    /// Reads the header of the age file in `input` and returns a reader of its plaintext,
    /// which fails on any chunk that was altered. Fails if this key does not open the file.
    pub fn open<R: Read>(&self, input: R) -> Result<age::stream::StreamReader<R>, OpenError> {
        age::Decryptor::new(input)
            .and_then(|d| d.decrypt(iter::once(&self.identity as &dyn age::Identity)))
            .map_err(|error| match error {
                age::DecryptError::Io(error) => OpenError::Read(error),
                other => OpenError::Refused(other.to_string()),
            })
    }
}

/// Why a sealed file did not open.
#[derive(Debug)]
pub enum OpenError {
    /// Reading its header failed: the storage's problem, not the file's.
    Read(io::Error),
    /// The header is not one this key opens (another key, or damaged bytes).
    Refused(String),
}

/// The keys of an agent: the first seals, every one opens.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Vec<Key>,
}

impl Keys {
    /// Loads the identity files, in order. Each must hold exactly one X25519 identity and be
    /// readable by its owner only.
    pub fn load(files: &[PathBuf]) -> AgentResult<Self> {
        let mut keys: Vec<Key> = Vec::with_capacity(files.len());
        for file in files {
            let key = load_key(file)?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(AgentError::Config(format!(
                    "encryption key file {} holds key {}, which an earlier file already holds",
                    file.display(),
                    key.id
                )));
            }
            keys.push(key);
        }
        Ok(Self { keys })
    }

    /// The key new artifacts are sealed with, if encryption is configured.
    pub fn sealing(&self) -> Option<&Key> {
        self.keys.first()
    }

    /// The key that opens artifact `artifact_id`, sealed as `encryption` records; refuses,
    /// naming the key it needs, when this agent does not hold it.
    pub fn opening(&self, artifact_id: &str, encryption: &Encryption) -> AgentResult<&Key> {
        if encryption.scheme != ENCRYPTION_SCHEME {
            return Err(AgentError::MissingKey {
                artifact_id: artifact_id.to_owned(),
                detail: format!(
                    "it is sealed with scheme {:?}, which this agent does not know (it knows {ENCRYPTION_SCHEME:?})",
                    encryption.scheme
                ),
            });
        }
        self.keys
            .iter()
            .find(|k| k.id == encryption.key_id)
            .ok_or_else(|| AgentError::MissingKey {
                artifact_id: artifact_id.to_owned(),
                detail: format!(
                    "it is encrypted with key {}, which this agent does not hold ({}); add that \
                     key's identity file to [encryption] key_files",
                    encryption.key_id,
                    if self.keys.is_empty() {
                        "it has no keys".to_owned()
                    } else {
                        format!("it holds {}", self.ids().join(", "))
                    }
                ),
            })
    }

    /// Ids of every key, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

/// Reads one identity file: comments (`#`) and blank lines aside, exactly one
/// `AGE-SECRET-KEY-1...` line.
fn load_key(file: &Path) -> AgentResult<Key> {
    let text = warden_shared::pki::read_private(file).map_err(|e| {
        AgentError::Config(format!(
            "cannot use encryption key file {}: {e}",
            file.display()
        ))
    })?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines.as_slice() else {
        return Err(AgentError::Config(format!(
            "encryption key file {} must hold exactly one AGE-SECRET-KEY-1... line, it holds {}",
            file.display(),
            lines.len()
        )));
    };
    // The parser's error could quote the line: only say what is wrong with it.
    let identity = Identity::from_str(line).map_err(|_| {
        AgentError::Config(format!(
            "encryption key file {} does not hold an age X25519 identity (AGE-SECRET-KEY-1...)",
            file.display()
        ))
    })?;
    let recipient = identity.to_public();
    Ok(Key {
        id: recipient.to_string(),
        recipient,
        identity,
    })
}

/// Writes a new identity file at `path` (mode 0600, refused if it exists) in the format of
/// `age-keygen`, and returns the new key's id.
pub fn generate(path: &Path) -> AgentResult<String> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(AgentError::Config(format!(
            "{} exists; a key file is never overwritten (its artifacts would stop opening)",
            path.display()
        )));
    }
    let identity = Identity::generate();
    let id = identity.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {id}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    );
    warden_shared::pki::write_private(path, text.as_bytes()).map_err(|e| AgentError::Io {
        context: format!("cannot write {}", path.display()),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, name: &str) -> (PathBuf, String) {
        let path = dir.join(name);
        let id = generate(&path).expect("generate");
        (path, id)
    }

    #[test]
    fn sealed_bytes_open_with_their_key_only_and_hide_the_plaintext() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (new, new_id) = key_file(tmp.path(), "new.key");
        let (old, old_id) = key_file(tmp.path(), "old.key");
        let keys = Keys::load(&[new, old]).expect("load");
        assert_eq!(keys.ids(), vec![new_id.as_str(), old_id.as_str()]);
        let sealing = keys.sealing().expect("a sealing key");
        assert_eq!(sealing.id(), new_id);
        assert!(new_id.starts_with("age1"), "{new_id}");

        let plaintext = b"Dvo\xc5\x99\xc3\xa1k,Symphony No. 9\n".repeat(10_000);
        let mut writer = sealing.seal(Vec::new()).expect("seal");
        writer.write_all(&plaintext).expect("write");
        let sealed = writer.finish().expect("finish");
        assert!(
            !sealed.windows(8).any(|w| w == b"Symphony"),
            "no plaintext in the sealed bytes"
        );

        let opening = keys
            .opening("a1", &sealing.encryption())
            .expect("the key is held");
        let mut opened = Vec::new();
        opening
            .open(&sealed[..])
            .expect("opens")
            .read_to_end(&mut opened)
            .expect("read");
        assert_eq!(opened, plaintext);

        // Another key refuses the header; a flipped byte in a chunk fails its read.
        let other = Keys::load(&[tmp.path().join("old.key")]).expect("old only");
        let old_key = other.sealing().expect("key");
        assert!(matches!(
            old_key.open(&sealed[..]),
            Err(OpenError::Refused(_))
        ));
        let mut damaged = sealed.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        let mut sink = Vec::new();
        let read = opening
            .open(&damaged[..])
            .expect("header intact")
            .read_to_end(&mut sink);
        assert!(read.is_err(), "a damaged chunk does not read");
    }

    #[test]
    fn a_missing_key_is_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (file, id) = key_file(tmp.path(), "k.key");
        let keys = Keys::load(&[file]).expect("load");
        let wanted = Encryption {
            scheme: ENCRYPTION_SCHEME.to_owned(),
            key_id: "age1missing".to_owned(),
        };
        let error = keys
            .opening("a1", &wanted)
            .expect_err("missing")
            .to_string();
        assert!(error.contains("artifact a1"), "{error}");
        assert!(error.contains("age1missing"), "{error}");
        assert!(error.contains(&id), "{error}");
        assert!(error.contains("nothing was changed"), "{error}");
        let none = Keys::default()
            .opening("a1", &wanted)
            .expect_err("no keys")
            .to_string();
        assert!(none.contains("it has no keys"), "{none}");
        let scheme = Encryption {
            scheme: "rot13".to_owned(),
            key_id: id,
        };
        let error = keys.opening("a1", &scheme).expect_err("scheme").to_string();
        assert!(error.contains("\"rot13\""), "{error}");
    }

    #[test]
    fn bad_key_files_are_refused_without_quoting_them() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (file, _) = key_file(tmp.path(), "k.key");
        assert!(
            generate(&file)
                .expect_err("exists")
                .to_string()
                .contains("never overwritten")
        );
        let write = |name: &str, text: &str| {
            let path = tmp.path().join(name);
            warden_shared::pki::write_private(&path, text.as_bytes()).expect("write");
            path
        };
        let secret = fs::read_to_string(&file).expect("read");
        let two = write("two.key", &format!("{secret}{secret}"));
        let garbage = write("garbage.key", "AGE-SECRET-KEY-1NOTAKEY\n");
        let empty = write("empty.key", "# nothing\n");
        for (path, why) in [
            (&two, "it holds 2"),
            (&garbage, "does not hold an age X25519 identity"),
            (&empty, "it holds 0"),
            (
                &tmp.path().join("absent.key"),
                "cannot use encryption key file",
            ),
        ] {
            let error = Keys::load(std::slice::from_ref(path))
                .expect_err(why)
                .to_string();
            assert!(error.contains(why), "{error}");
            assert!(!error.contains("NOTAKEY"), "{error}");
        }
        let dup = Keys::load(&[file.clone(), file.clone()])
            .expect_err("twice")
            .to_string();
        assert!(dup.contains("an earlier file already holds"), "{dup}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        let open = Keys::load(&[file]).expect_err("readable").to_string();
        assert!(open.contains("chmod 600"), "{open}");
    }
}
