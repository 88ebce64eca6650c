//! An `s3://bucket/prefix` repository in any S3-compatible object store (the `object_store`
//! crate speaks the protocol).
//!
//! A data file is written as a multipart upload straight from the compressing thread:
//! parts of [`FIRST_PART_BYTES`], at most [`PARTS_IN_FLIGHT`] uploading while the next one
//! fills, so the memory a backup holds for its upload is `(PARTS_IN_FLIGHT + 1)` parts (24
//! MiB) and nothing is staged on local disk. S3 takes at most 10,000 parts, so the part size
//! doubles every [`PARTS_PER_SIZE`] parts: the first 8 GiB go in 8 MiB parts, the next 16
//! GiB in 16 MiB parts, and so on (past 56 GiB stored, parts are 64 MiB and the upload holds
//! 192 MiB); a file of about 1 TiB still fits.
//!
//! A download resumes where it broke off (a ranged GET of the same object version, by its
//! ETag), so a restore that reads for hours survives a dropped connection.
//!
//! S3 cannot list the uploads a crash left unfinished without a permission few policies
//! grant, so each upload announces itself first: `<file>.upload` holds its upload id from
//! before the first part until the upload is complete. An upload that fails or is cancelled
//! is aborted at once; one that a kill interrupted is aborted by
//! [`ObjectRepository::cleanup_incomplete`] when the agent comes back, from its marker, with
//! the rest of the artifact (it has no manifest). A bucket lifecycle rule that aborts
//! incomplete multipart uploads after a day covers the one gap: a kill between starting
//! an upload and writing its marker.
//!
//! The manifest is a single PUT, written only after every upload completed: the commit
//! point. Removal deletes the manifest first, so a half-removed artifact is an unfinished one.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt,
    PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use url::Url;
use warden_shared::manifest::MANIFEST_FILE;

use super::{Removal, Sink, Source, WriterGuard, check_relative};
use crate::error::{AgentError, AgentResult};

/// Size of the first parts of a multipart upload (S3's minimum is 5 MiB).
pub const FIRST_PART_BYTES: usize = 8 << 20;
/// Parts of one size before the size doubles.
pub const PARTS_PER_SIZE: usize = 1000;
/// S3's most parts in one upload.
const MAX_PARTS: usize = 10_000;
/// Parts uploading at once while the next one fills.
pub const PARTS_IN_FLIGHT: usize = 2;
/// How often a broken download is resumed before the read fails.
const RESUMES: u32 = 10;
/// The most of a storage error's text kept for messages (some stores answer with pages).
const MAX_ERROR_CHARS: usize = 600;
/// Suffix of the marker object that holds the id of a file's unfinished upload.
const UPLOAD_SUFFIX: &str = ".upload";
/// Name (under an agent's prefix) of the directory of its probe objects: inside what a
/// least-privilege policy lets the agent write, and cleared with unfinished artifacts.
const PROBE_DIR: &str = ".probe";

/// Where the bucket is and how to sign for it, beyond what the URL says. Every field left
/// unset comes from the standard AWS environment variables (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...),
/// and without keys anywhere, from the instance's or the task's role.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// The service's URL, for a store other than AWS: `https://minio.internal:9000`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Buckets addressed as `endpoint/bucket/key` rather than `bucket.endpoint/key`: what
    /// most S3-compatible stores other than AWS want.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .finish()
    }
}

impl S3Settings {
    /// The same settings with the secrets replaced by `***`, for showing.
    pub fn redacted(&self) -> Self {
        let hide = |s: &Option<String>| s.as_ref().map(|_| "***".to_owned());
        Self {
            secret_access_key: hide(&self.secret_access_key),
            session_token: hide(&self.session_token),
            ..self.clone()
        }
    }
}

/// An `s3://` repository.
#[derive(Clone)]
pub struct ObjectRepository {
    url: String,
    bucket: String,
    /// Key prefix of the repository, without slashes at either end; may be empty.
    prefix: String,
    store: Arc<AmazonS3>,
}

impl std::fmt::Debug for ObjectRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRepository")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ObjectRepository {
    /// Parses `s3://bucket[/prefix]` and builds the client; reaches nothing yet.
    pub fn open(url: &str, settings: &S3Settings) -> AgentResult<Self> {
        // The URL is shown in errors, with any credentials someone put in it hidden.
        let shown = match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.to_owned(),
        };
        let invalid = |why: &str| {
            AgentError::Config(format!(
                "repository {shown:?} is not a usable S3 URL: {why}; use s3://bucket/prefix"
            ))
        };
        let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| invalid("it names no bucket"))?
            .to_owned();
        if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty()
        {
            return Err(invalid(
                "it has a query, a fragment or credentials (put credentials in [s3] or the \
                 environment)",
            ));
        }
        let prefix = parsed.path().trim_matches('/').to_owned();
        if !prefix.is_empty() {
            check_relative(&prefix).map_err(|_| invalid("its prefix is not a plain path"))?;
        }
        // reqwest's TLS needs a crypto provider: ring, as everywhere in Warden. Installing
        // fails only when one is installed already, which is as good.
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    // A download feeds a restore at the restore's pace: no deadline for the
                    // whole body. A read may wait this long (a part's upload waits for its
                    // answer as long: 8 MiB in 5 minutes is 28 KB/s).
                    .with_timeout_disabled()
                    .with_read_timeout(Duration::from_secs(300)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 5,
                retry_timeout: Duration::from_secs(15 * 60),
            });
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(path_style) = settings.path_style {
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        if let Some(key) = &settings.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &settings.session_token {
            builder = builder.with_token(token);
        }
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        // The builder's error names the setting; it never holds a secret's value.
        let store = builder
            .build()
            .map_err(|e| AgentError::Config(format!("repository {url}: {e}")))?;
        Ok(Self {
            url: url.to_owned(),
            bucket,
            prefix,
            store: Arc::new(store),
        })
    }

    /// Returns the URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Checks `artifact_path` and returns it.
    pub fn check_path<'a>(&self, artifact_path: &'a str) -> AgentResult<&'a str> {
        check_relative(artifact_path)?;
        Ok(artifact_path)
    }

    /// The key of `name` under `relative` (both checked plain paths).
    fn key(&self, relative: &str, name: &str) -> AgentResult<ObjectPath> {
        let joined = [self.prefix.as_str(), relative, name]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        ObjectPath::parse(&joined).map_err(|e| {
            AgentError::InvalidOrder(format!("{joined:?} is not a usable object key: {e}"))
        })
    }

    /// `s3://bucket/key` of `name` under `relative`, for messages.
    pub fn location(&self, relative: &str, name: &str) -> String {
        let key = [self.prefix.as_str(), relative, name]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        format!("s3://{}/{key}", self.bucket)
    }

    /// Reads an artifact's manifest; returns its bytes and where they were.
    pub async fn read_manifest_bytes(&self, artifact_path: &str) -> AgentResult<(Vec<u8>, String)> {
        check_relative(artifact_path)?;
        let key = self.key(artifact_path, MANIFEST_FILE)?;
        let location = self.location(artifact_path, MANIFEST_FILE);
        let bytes = match self.store.get(&key).await {
            Ok(got) => got.bytes().await,
            Err(error) => Err(error),
        };
        match bytes {
            Ok(bytes) => Ok((bytes.to_vec(), location)),
            Err(error) => Err(self.read_error(artifact_path, &location, error).await),
        }
    }

    /// Opens data file `name` of the artifact at `artifact_path` as a stream.
    pub async fn open_file(&self, artifact_path: &str, name: &str) -> AgentResult<Source> {
        let key = self.key(artifact_path, name)?;
        let location = self.location(artifact_path, name);
        let got = match self.store.get(&key).await {
            Ok(got) => got,
            Err(error) => return Err(self.read_error(artifact_path, &location, error).await),
        };
        Ok(Box::new(StreamSource {
            runtime: Handle::current(),
            store: self.store.clone(),
            key,
            e_tag: got.meta.e_tag.clone(),
            offset: 0,
            resumes: 0,
            stream: got.into_stream(),
            chunk: Bytes::new(),
        }))
    }

    /// Classifies a failed read of `location`. Not found is [`AgentError::ArtifactMissing`]
    /// (the artifact is unusable, and the catalog marks it corrupt) only when the bucket
    /// holds something of the agent that took the artifact: an S3 404 is also what a wrong
    /// bucket, prefix or endpoint answers, which says nothing about the artifact.
    async fn read_error(
        &self,
        artifact_path: &str,
        location: &str,
        error: object_store::Error,
    ) -> AgentError {
        match error {
            object_store::Error::NotFound { .. } => {
                match self.holds_agent_of(artifact_path).await {
                    Ok(true) => AgentError::ArtifactMissing {
                        artifact_path: artifact_path.to_owned(),
                        location: location.to_owned(),
                    },
                    Ok(false) => AgentError::Storage {
                        context: format!("cannot read {location}"),
                        message: self.foreign(artifact_path),
                    },
                    Err(error) => error,
                }
            }
            other => storage_error(format!("cannot read {location}"), other),
        }
    }

    /// Whether the bucket holds any object of the agent that `artifact_path` starts with.
    async fn holds_agent_of(&self, artifact_path: &str) -> AgentResult<bool> {
        let agent = artifact_path.split('/').next().unwrap_or_default();
        let prefix = self.key(agent, "")?;
        match self.store.list(Some(&prefix)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(error)) => Err(storage_error(
                format!("cannot list {}", self.location(agent, "")),
                error,
            )),
        }
    }

    /// Says that this repository holds nothing of the agent that took `artifact_path`.
    fn foreign(&self, artifact_path: &str) -> String {
        let agent = artifact_path.split('/').next().unwrap_or_default();
        format!(
            "not found, and {} holds nothing of agent {agent}: is this the bucket, prefix and \
             endpoint that agent writes to?",
            self.location("", "")
        )
    }

    /// Starts the multipart upload of data file `name` of the artifact at `artifact_path`,
    /// announced by its marker before any part is sent.
    ///
    /// `guard` is held until the upload is complete or aborted, parts in flight included.
    pub async fn create_file(
        &self,
        artifact_path: &str,
        name: &str,
        guard: WriterGuard,
    ) -> AgentResult<Box<dyn Sink>> {
        let key = self.key(artifact_path, name)?;
        let marker = self.key(artifact_path, &format!("{name}{UPLOAD_SUFFIX}"))?;
        let location = self.location(artifact_path, name);
        // On a task of its own: a cancelled order must not stop between starting the
        // upload and announcing it, which would leave an upload nothing names.
        let (store, upload_key, upload_marker) = (self.store.clone(), key.clone(), marker.clone());
        let started = tokio::spawn(async move {
            let id = store
                .create_multipart(&upload_key)
                .await
                .map_err(|e| storage_error(format!("cannot start the upload of {location}"), e))?;
            let announced = store
                .put(&upload_marker, PutPayload::from(id.clone().into_bytes()))
                .await;
            if let Err(error) = announced {
                if let Err(abort) = store.abort_multipart(&upload_key, &id).await {
                    tracing::warn!(key = %upload_key, error = %abort, "cannot abort an unannounced upload");
                }
                return Err(storage_error(
                    format!("cannot write the upload marker of {location}"),
                    error,
                ));
            }
            Ok(id)
        });
        let id = started.await.map_err(|e| AgentError::Storage {
            context: "cannot start an upload".to_owned(),
            message: e.to_string(),
        })??;
        Ok(Box::new(UploadSink {
            runtime: Handle::current(),
            store: self.store.clone(),
            key,
            marker,
            id,
            buffer: Vec::new(),
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            finished: false,
            guard: Some(guard),
        }))
    }

    /// Aborts the upload of data file `name` of the artifact at `artifact_path` and deletes
    /// its marker.
    pub async fn discard_file(&self, artifact_path: &str, name: &str) -> AgentResult<()> {
        let marker = format!("{name}{UPLOAD_SUFFIX}");
        self.remove_objects(artifact_path, vec![name.to_owned(), marker])
            .await
    }

    /// Checks that the data files `files` (name, size) of the artifact at `artifact_path`
    /// are in the bucket whole, just before its manifest is written: nothing else (a
    /// second process under this agent's name cleaning up at its start) removed them.
    pub async fn check_files(
        &self,
        artifact_path: &str,
        files: &[(String, u64)],
    ) -> AgentResult<()> {
        for (name, size) in files {
            let key = self.key(artifact_path, name)?;
            let location = self.location(artifact_path, name);
            let meta = self.store.head(&key).await.map_err(|e| {
                storage_error(format!("cannot find {location} after its upload"), e)
            })?;
            if meta.size != *size {
                return Err(AgentError::Storage {
                    context: format!("{location} is not what was uploaded"),
                    message: format!("it holds {} bytes, {size} were written", meta.size),
                });
            }
        }
        Ok(())
    }

    /// Writes the manifest of the artifact at `artifact_path`: the commit point.
    pub async fn write_manifest(&self, artifact_path: &str, bytes: Vec<u8>) -> AgentResult<()> {
        let key = self.key(artifact_path, MANIFEST_FILE)?;
        self.store
            .put(&key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| {
                storage_error(
                    format!(
                        "cannot write {}",
                        self.location(artifact_path, MANIFEST_FILE)
                    ),
                    e,
                )
            })
    }

    /// Lists every object under `relative` (an agent or an artifact): keys relative to it.
    async fn list(&self, relative: &str) -> AgentResult<Vec<String>> {
        let prefix = self.key(relative, "")?;
        let mut listed = self.store.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| {
                storage_error(format!("cannot list {}", self.location(relative, "")), e)
            })?;
            if let Some(rest) = meta
                .location
                .as_ref()
                .strip_prefix(prefix.as_ref())
                .and_then(|r| r.strip_prefix('/'))
            {
                keys.push(rest.to_owned());
            }
        }
        Ok(keys)
    }

    /// Removes every object of the artifact at `artifact_path` (checked by the caller):
    /// the manifest first, then the unfinished uploads its markers name, then the rest.
    ///
    /// An artifact with no object left is already gone only if the bucket holds something
    /// of its agent: otherwise this is likely not the repository it was written to, and
    /// calling it removed would drop it from the catalog while its objects stay elsewhere.
    pub async fn remove_artifact(&self, artifact_path: &str) -> AgentResult<Removal> {
        let names = self.list(artifact_path).await?;
        if names.is_empty() {
            if self.holds_agent_of(artifact_path).await? {
                return Ok(Removal::AlreadyGone);
            }
            return Err(AgentError::Storage {
                context: format!("cannot remove {}", self.location(artifact_path, "")),
                message: format!("{}; nothing was removed", self.foreign(artifact_path)),
            });
        }
        self.remove_objects(artifact_path, names).await?;
        Ok(Removal::Removed)
    }

    /// Deletes `names` of the artifact at `artifact_path`, in the order that keeps a
    /// half-removed artifact recognisable as unfinished.
    async fn remove_objects(&self, artifact_path: &str, mut names: Vec<String>) -> AgentResult<()> {
        // The manifest first, the markers last: until then, a crash leaves an artifact
        // without a manifest whose markers still name its uploads.
        names.sort_by_key(|n| (n != MANIFEST_FILE, n.ends_with(UPLOAD_SUFFIX)));
        for name in &names {
            if let Some(file) = name.strip_suffix(UPLOAD_SUFFIX) {
                self.abort_upload(artifact_path, file, name).await?;
            }
            let key = self.key(artifact_path, name)?;
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    return Err(storage_error(
                        format!("cannot delete {}", self.location(artifact_path, name)),
                        error,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Aborts the upload of `file` that the marker `marker` names, if it is still there.
    async fn abort_upload(&self, artifact_path: &str, file: &str, marker: &str) -> AgentResult<()> {
        let marker_key = self.key(artifact_path, marker)?;
        let id = match self.store.get(&marker_key).await {
            Ok(got) => got.bytes().await,
            Err(error) => Err(error),
        };
        let id = match id {
            Ok(id) => String::from_utf8_lossy(&id).into_owned(),
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(error) => {
                return Err(storage_error(
                    format!("cannot read {}", self.location(artifact_path, marker)),
                    error,
                ));
            }
        };
        let key = self.key(artifact_path, file)?;
        match self.store.abort_multipart(&key, &id).await {
            // An upload that completed, or was aborted already, is not there any more.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(storage_error(
                format!(
                    "cannot abort the upload of {}",
                    self.location(artifact_path, file)
                ),
                error,
            )),
        }
    }

    /// Removes every artifact of `agent` that has no manifest, aborting its unfinished
    /// uploads, and returns their locations; also the probe objects a kill left behind.
    pub async fn cleanup_incomplete(&self, agent: &str) -> AgentResult<Vec<String>> {
        warden_shared::validate_agent_name(agent)?;
        // Grouped by the first part under the agent's prefix: each artifact, and the probe
        // objects a kill left behind, which go too.
        let mut artifacts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in self.list(agent).await? {
            if let Some((id, name)) = key.split_once('/') {
                artifacts
                    .entry(id.to_owned())
                    .or_default()
                    .push(name.to_owned());
            }
        }
        let mut removed = Vec::new();
        for (id, names) in artifacts {
            if names.iter().any(|n| n == MANIFEST_FILE) {
                continue;
            }
            let path = format!("{agent}/{id}");
            self.remove_objects(&path, names).await?;
            if id == PROBE_DIR {
                continue;
            }
            let location = self.location(&path, "");
            tracing::info!(%location, "removed unfinished artifact");
            removed.push(location);
        }
        Ok(removed)
    }

    /// Writes, reads back and deletes `<agent>/.probe/<uuid>`.
    pub async fn probe(&self, agent: &str) -> AgentResult<()> {
        warden_shared::validate_agent_name(agent)?;
        let relative = format!("{agent}/{PROBE_DIR}");
        let name = uuid::Uuid::now_v7().to_string();
        let key = self.key(&relative, &name)?;
        let location = self.location(&relative, &name);
        let expected = Bytes::from(format!("warden probe of agent {agent}"));
        self.store
            .put(&key, PutPayload::from(expected.clone()))
            .await
            .map_err(|e| storage_error(format!("cannot write {location}"), e))?;
        let read = match self.store.get(&key).await {
            Ok(got) => got.bytes().await,
            Err(error) => Err(error),
        };
        let deleted = self.store.delete(&key).await;
        let read = read.map_err(|e| storage_error(format!("cannot read {location}"), e))?;
        if read != expected {
            return Err(AgentError::Storage {
                context: format!("cannot read {location}"),
                message: "it does not hold what was written".to_owned(),
            });
        }
        deleted.map_err(|e| storage_error(format!("cannot delete {location}"), e))
    }
}

/// The storage's own error: what an operator needs to fix a bucket or a key.
fn storage_error(context: String, error: object_store::Error) -> AgentError {
    AgentError::Storage {
        context,
        message: storage_message(&crate::error::error_chain(&error)),
    }
}

/// Shortens a storage error for people: an S3 XML error body becomes its `Code: Message`
/// (the rest of it can echo a signed request, session token included), and no text is
/// longer than [`MAX_ERROR_CHARS`].
fn storage_message(text: &str) -> String {
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].to_owned())
    };
    let text = match (
        text.find("<?xml").or_else(|| text.find("<Error>")),
        element("Code"),
    ) {
        (Some(body), Some(code)) => {
            let message = element("Message")
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            format!("{}{code}{message}", &text[..body])
        }
        _ => text.to_owned(),
    };
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// A download read on a blocking thread, resumed where it broke off.
struct StreamSource {
    runtime: Handle,
    store: Arc<AmazonS3>,
    key: ObjectPath,
    /// The version being read: a resumed read must get the same bytes.
    e_tag: Option<String>,
    /// Bytes handed out so far.
    offset: u64,
    resumes: u32,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl StreamSource {
    /// Starts a ranged GET of the rest of the object after a broken download.
    fn resume(&mut self, broken: object_store::Error) -> io::Result<()> {
        if self.resumes >= RESUMES {
            return Err(io::Error::other(broken));
        }
        self.resumes += 1;
        tracing::warn!(key = %self.key, offset = self.offset, error = %broken, "download broke off; resuming");
        let options = GetOptions {
            range: Some(GetRange::Offset(self.offset)),
            if_match: self.e_tag.clone(),
            ..GetOptions::default()
        };
        let pause = Duration::from_millis(200 << self.resumes.min(6));
        let (store, key) = (self.store.clone(), self.key.clone());
        let got = self.runtime.block_on(async move {
            tokio::time::sleep(pause).await;
            store.get_opts(&key, options).await
        });
        self.stream = got.map_err(io::Error::other)?.into_stream();
        Ok(())
    }
}

impl Read for StreamSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(error)) => self.resume(error)?,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        self.offset += n as u64;
        Ok(n)
    }
}

/// A multipart upload written from a blocking thread; see the module doc for its memory.
struct UploadSink {
    runtime: Handle,
    store: Arc<AmazonS3>,
    key: ObjectPath,
    marker: ObjectPath,
    id: MultipartId,
    buffer: Vec<u8>,
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    parts: Vec<PartId>,
    finished: bool,
    /// Held until the upload is complete, or aborted once its parts in flight settled.
    guard: Option<WriterGuard>,
}

impl UploadSink {
    /// Size of the part being filled: [`FIRST_PART_BYTES`], doubled every
    /// [`PARTS_PER_SIZE`] parts.
    fn part_bytes(&self) -> usize {
        let index = self.parts.len() + self.in_flight.len();
        FIRST_PART_BYTES << (index / PARTS_PER_SIZE).min(9)
    }

    /// Starts uploading the buffer as the next part, first waiting for the oldest part in
    /// flight if [`PARTS_IN_FLIGHT`] are.
    fn send_part(&mut self) -> io::Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let index = self.parts.len() + self.in_flight.len();
        if index >= MAX_PARTS {
            return Err(io::Error::other(format!(
                "the file has outgrown the {MAX_PARTS} parts of one S3 upload"
            )));
        }
        let data = std::mem::take(&mut self.buffer);
        let (store, key, id) = (self.store.clone(), self.key.clone(), self.id.clone());
        self.in_flight.push_back(self.runtime.spawn(async move {
            store
                .put_part(&key, &id, index, PutPayload::from(data))
                .await
        }));
        Ok(())
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(part) = self.in_flight.pop_front() {
            let part = self
                .runtime
                .block_on(part)
                .map_err(io::Error::other)?
                .map_err(io::Error::other)?;
            self.parts.push(part);
        }
        Ok(())
    }
}

impl Write for UploadSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let part_bytes = self.part_bytes();
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(part_bytes);
        }
        let n = buf.len().min(part_bytes - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == part_bytes {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for UploadSink {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        // The last part may be short, or empty for an empty file: S3 wants at least one.
        if !self.buffer.is_empty() || self.parts.len() + self.in_flight.len() == 0 {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let parts = std::mem::take(&mut self.parts);
        let (store, key, id, marker) = (
            self.store.clone(),
            self.key.clone(),
            self.id.clone(),
            self.marker.clone(),
        );
        self.runtime.block_on(async move {
            store
                .complete_multipart(&key, &id, parts)
                .await
                .map_err(io::Error::other)?;
            // The upload is complete: nothing is left to abort.
            store.delete(&marker).await.map_err(io::Error::other)
        })?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Abandoned (failed, cancelled): the upload is aborted once the parts in flight
        // settled (a part that lands after the abort would be stored, unlisted, for good).
        // The guard goes with it, so discarding the artifact waits for this; the marker
        // stays until then, and a lost abort is done again from it.
        let parts: Vec<_> = self.in_flight.drain(..).collect();
        let (store, key, id) = (self.store.clone(), self.key.clone(), self.id.clone());
        let guard = self.guard.take();
        self.runtime.spawn(async move {
            for part in parts {
                let _ = part.await;
            }
            if let Err(error) = store.abort_multipart(&key, &id).await {
                tracing::warn!(key = %key, %error, "cannot abort an abandoned upload");
            }
            drop(guard);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_keep_the_code_and_message_of_an_s3_body() {
        let text = "Generic S3 error: Error performing PUT http://s3/b/k in 2ms - Server \
                    returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\
                    <Error><Code>SignatureDoesNotMatch</Code><Message>The request signature \
                    we calculated does not match</Message><CanonicalRequest>PUT /b/k \
                    x-amz-security-token:FwoGZXIvYXdzE</CanonicalRequest></Error>";
        let shown = storage_message(text);
        assert!(
            shown.ends_with(
                "403 Forbidden: SignatureDoesNotMatch: The request signature we calculated does \
                 not match"
            ),
            "{shown}"
        );
        assert!(!shown.contains("FwoGZXIvYXdzE"), "{shown}");
        let page = format!("502 Bad Gateway: <html>{}</html>", "x".repeat(5000));
        let shown = storage_message(&page);
        assert_eq!(shown.chars().count(), MAX_ERROR_CHARS + 3, "{shown}");
        assert_eq!(storage_message("connection refused"), "connection refused");
    }

    #[test]
    fn urls_name_a_bucket_and_a_plain_prefix() {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:9".to_owned()),
            region: Some("us-east-1".to_owned()),
            ..S3Settings::default()
        };
        let repo = ObjectRepository::open("s3://backups/warden/prod/", &settings).expect("valid");
        assert_eq!(
            repo.location("db1/a1", "dump.zst"),
            "s3://backups/warden/prod/db1/a1/dump.zst"
        );
        assert_eq!(
            repo.key("db1/a1", "manifest.json").expect("key").as_ref(),
            "warden/prod/db1/a1/manifest.json"
        );
        let bare = ObjectRepository::open("s3://backups", &settings).expect("valid");
        assert_eq!(bare.location("db1", ""), "s3://backups/db1");
        for (bad, why) in [
            ("s3:///x", "names no bucket"),
            ("s3://key:secret@b/x", "credentials"),
            ("s3://b/x?versionId=1", "query"),
        ] {
            let error = ObjectRepository::open(bad, &settings)
                .expect_err(bad)
                .to_string();
            assert!(error.contains(why), "{bad}: {error}");
            assert!(!error.contains("secret@"), "{error}");
        }
    }
}
