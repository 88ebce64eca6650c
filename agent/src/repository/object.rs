//! An `s3://bucket/prefix` repository in any S3-compatible object store (the `object_store`
//! crate speaks the protocol).
//!
//! A data file is written as a multipart upload straight from the compressing thread:
//! parts of [`PART_BYTES`], at most [`PARTS_IN_FLIGHT`] uploading while the next one fills,
//! so the memory a backup holds for its upload is `(PARTS_IN_FLIGHT + 1) × PART_BYTES`
//! (24 MiB) whatever the database's size, and nothing is staged on local disk.
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
    BackoffConfig, ClientOptions, MultipartId, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use url::Url;
use warden_shared::manifest::MANIFEST_FILE;

use super::{Removal, Sink, Source, check_relative};
use crate::error::{AgentError, AgentResult};

/// Size of each part of a multipart upload but the last (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 << 20;
/// Parts uploading at once while the next one fills.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Suffix of the marker object that holds the id of a file's unfinished upload.
const UPLOAD_SUFFIX: &str = ".upload";
/// Prefix (under the repository's) of the probe objects.
const PROBE_PREFIX: &str = ".warden-probe";

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
        let invalid = |why: &str| {
            AgentError::Config(format!(
                "repository {url:?} is not a usable S3 URL: {why}; use s3://bucket/prefix"
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
                    // whole body, only for each read.
                    .with_timeout_disabled()
                    .with_read_timeout(Duration::from_secs(60)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
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
        }
        .map_err(|e| self.read_error(artifact_path, &location, e))?;
        Ok((bytes.to_vec(), location))
    }

    /// Opens data file `name` of the artifact at `artifact_path` as a stream.
    pub async fn open_file(&self, artifact_path: &str, name: &str) -> AgentResult<Source> {
        let key = self.key(artifact_path, name)?;
        let location = self.location(artifact_path, name);
        let got = self
            .store
            .get(&key)
            .await
            .map_err(|e| self.read_error(artifact_path, &location, e))?;
        Ok(Box::new(StreamSource {
            runtime: Handle::current(),
            stream: got.into_stream(),
            chunk: Bytes::new(),
        }))
    }

    fn read_error(
        &self,
        artifact_path: &str,
        location: &str,
        error: object_store::Error,
    ) -> AgentError {
        match error {
            object_store::Error::NotFound { .. } => AgentError::ArtifactMissing {
                artifact_path: artifact_path.to_owned(),
                location: location.to_owned(),
            },
            other => storage_error(format!("cannot read {location}"), other),
        }
    }

    /// Starts the multipart upload of data file `name` of the artifact at `artifact_path`,
    /// announced by its marker before any part is sent.
    pub async fn create_file(&self, artifact_path: &str, name: &str) -> AgentResult<Box<dyn Sink>> {
        let key = self.key(artifact_path, name)?;
        let marker = self.key(artifact_path, &format!("{name}{UPLOAD_SUFFIX}"))?;
        let location = self.location(artifact_path, name);
        let id = self
            .store
            .create_multipart(&key)
            .await
            .map_err(|e| storage_error(format!("cannot start the upload of {location}"), e))?;
        let announced = self
            .store
            .put(&marker, PutPayload::from(id.clone().into_bytes()))
            .await;
        if let Err(error) = announced {
            let _ = self.store.abort_multipart(&key, &id).await;
            return Err(storage_error(
                format!("cannot write the upload marker of {location}"),
                error,
            ));
        }
        Ok(Box::new(UploadSink {
            runtime: Handle::current(),
            store: self.store.clone(),
            key,
            marker,
            id,
            buffer: Vec::with_capacity(PART_BYTES),
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            finished: false,
        }))
    }

    /// Aborts the upload of data file `name` of the artifact at `artifact_path` and deletes
    /// its marker.
    pub async fn discard_file(&self, artifact_path: &str, name: &str) -> AgentResult<()> {
        let marker = format!("{name}{UPLOAD_SUFFIX}");
        self.remove_objects(artifact_path, vec![marker]).await
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
    pub async fn remove_artifact(&self, artifact_path: &str) -> AgentResult<Removal> {
        let names = self.list(artifact_path).await?;
        if names.is_empty() {
            return Ok(Removal::AlreadyGone);
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
        let mut artifacts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in self.list(agent).await? {
            if let Some((id, name)) = key.split_once('/') {
                artifacts
                    .entry(id.to_owned())
                    .or_default()
                    .push(name.to_owned());
            }
        }
        // Probes a kill interrupted: the agent's own, and no one else's.
        let probes = format!("{PROBE_PREFIX}/{agent}");
        let stale = self.list(&probes).await?;
        self.remove_objects(&probes, stale).await?;
        let mut removed = Vec::new();
        for (id, names) in artifacts {
            if names.iter().any(|n| n == MANIFEST_FILE) {
                continue;
            }
            let path = format!("{agent}/{id}");
            self.remove_objects(&path, names).await?;
            let location = self.location(&path, "");
            tracing::info!(%location, "removed unfinished artifact");
            removed.push(location);
        }
        Ok(removed)
    }

    /// Writes, reads back and deletes `.warden-probe/<agent>/<uuid>`.
    pub async fn probe(&self, agent: &str) -> AgentResult<()> {
        let relative = format!("{PROBE_PREFIX}/{agent}");
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

/// The storage's own error, whole: what an operator needs to fix a bucket or a key.
fn storage_error(context: String, error: object_store::Error) -> AgentError {
    AgentError::Storage {
        context,
        message: crate::error::error_chain(&error),
    }
}

/// A download read on a blocking thread.
struct StreamSource {
    runtime: Handle,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for StreamSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(error)) => return Err(io::Error::other(error)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
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
}

impl UploadSink {
    /// Starts uploading the buffer as the next part, first waiting for the oldest part in
    /// flight if [`PARTS_IN_FLIGHT`] are.
    fn send_part(&mut self) -> io::Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART_BYTES));
        let index = self.parts.len() + self.in_flight.len();
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
        let n = buf.len().min(PART_BYTES - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == PART_BYTES {
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
        // Abandoned (failed, cancelled): the parts sent so far go at once. The marker stays
        // until the artifact is discarded, which aborts again should this abort be lost.
        for part in self.in_flight.drain(..) {
            part.abort();
        }
        let (store, key, id) = (self.store.clone(), self.key.clone(), self.id.clone());
        self.runtime.spawn(async move {
            if let Err(error) = store.abort_multipart(&key, &id).await {
                tracing::warn!(key = %key, %error, "cannot abort an abandoned upload");
            }
        });
    }
}
