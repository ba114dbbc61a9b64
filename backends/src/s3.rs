//! An S3-compatible backend through the `object_store` crate (SigV4-signed requests, ring for
//! signing, rustls from the workspace's reqwest). Keys map to object names under an optional
//! prefix; puts stream in multipart parts so no blob is ever held whole in memory.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use serde::{Deserialize, Serialize};

use super::{Backend, BackendError};
use crate::ByteStream;

/// Multipart part size: S3's minimum part is 5 MiB; 8 MiB keeps the part count of a 10 GiB
/// layer (1280) far below S3's 10 000-part limit.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts uploaded at once; with [`PART_SIZE`] this bounds a put's memory to about 32 MiB.
const PART_CONCURRENCY: usize = 4;

/// object_store retries a failed request for up to 3 minutes by default; the write-back queue
/// and pull-through already retry with their own backoff, so give up sooner and let them.
const RETRY: RetryConfig = RetryConfig {
    backoff: BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
    },
    max_retries: 3,
    retry_timeout: Duration::from_secs(10),
};

/// `s3: { bucket: …, … }`. Credentials not given here come from the usual `AWS_*` environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Region for signing; `us-east-1` when unset.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible service (MinIO, Ceph, moto); AWS when unset. Requests use
    /// path-style addressing (`<endpoint>/<bucket>/<key>`).
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Prepended to every key, e.g. `shoal/` to share a bucket.
    pub prefix: Option<String>,
    /// Permit `http://` endpoints (test servers, in-cluster gateways).
    pub allow_http: bool,
}

/// Stores objects in an S3 bucket.
#[derive(Debug)]
pub struct S3Backend {
    store: AmazonS3,
    prefix: String,
}

impl S3Backend {
    /// Builds the client; makes no request.
    pub fn new(config: &S3Config) -> Result<S3Backend, BackendError> {
        // reqwest is built with rustls but no provider: install the process-wide ring one.
        shoal_http_client::install_crypto_provider();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_retry(RETRY);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|source| BackendError::ObjectStore {
                operation: "configure",
                key: format!("s3://{}", config.bucket),
                source: Box::new(source),
            })?;
        let prefix = config.prefix.clone().unwrap_or_default();
        Ok(S3Backend { store, prefix })
    }

    fn path(&self, key: &str) -> Result<Path, BackendError> {
        let full = format!("{}{key}", self.prefix);
        let invalid = |reason| BackendError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason,
        };
        if key.is_empty() || key.starts_with('/') {
            return Err(invalid("empty key or leading '/'"));
        }
        Path::parse(&full).map_err(|_| invalid("not a valid object name"))
    }
}

fn store_error(operation: &'static str, key: &str, source: object_store::Error) -> BackendError {
    BackendError::ObjectStore {
        operation,
        key: key.to_owned(),
        source: Box::new(source),
    }
}

#[async_trait]
impl Backend for S3Backend {
    async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError> {
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("stat", key, e)),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let path = self.path(key)?;
        let get_range = match &range {
            // An empty range cannot be requested: answer it from the object's length.
            Some(range) if range.end <= range.start => {
                let Some(len) = self.stat(key).await? else {
                    return Ok(None);
                };
                if range.start > len {
                    return Err(BackendError::RangeNotSatisfiable {
                        key: key.to_owned(),
                        start: range.start,
                        len,
                    });
                }
                return Ok(Some(futures::stream::empty().boxed()));
            }
            Some(range) => Some(GetRange::Bounded(range.clone())),
            None => None,
        };
        let options = GetOptions {
            range: get_range,
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                // Reading from exactly the end is empty; further is out of range.
                if let Some(range) = &range
                    && let Some(len) = self.stat(key).await?
                    && range.start >= len
                {
                    if range.start == len {
                        return Ok(Some(futures::stream::empty().boxed()));
                    }
                    return Err(BackendError::RangeNotSatisfiable {
                        key: key.to_owned(),
                        start: range.start,
                        len,
                    });
                }
                return Err(store_error("get", key, e));
            }
        };
        Ok(Some(
            result.into_stream().map_err(std::io::Error::other).boxed(),
        ))
    }

    async fn put(
        &self,
        key: &str,
        mut body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), BackendError> {
        let path = self.path(key)?;
        let body_error = |source| BackendError::Body {
            key: key.to_owned(),
            source,
        };
        // Small objects (tags, configs) go up in one request; anything that fills a part
        // switches to a multipart upload, which S3 makes visible only on completion.
        let mut first = BytesMut::new();
        let mut upload = None;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    abort(upload).await;
                    return Err(body_error(e));
                }
            };
            written += chunk.len() as u64;
            match &mut upload {
                Some(writer) => {
                    let writer: &mut WriteMultipart = writer;
                    if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                        abort(upload).await;
                        return Err(store_error("put part of", key, e));
                    }
                    writer.put(chunk);
                }
                None => {
                    first.extend_from_slice(&chunk);
                    if first.len() >= PART_SIZE {
                        let multipart = self
                            .store
                            .put_multipart(&path)
                            .await
                            .map_err(|e| store_error("start multipart upload of", key, e))?;
                        let mut writer = WriteMultipart::new_with_chunk_size(multipart, PART_SIZE);
                        writer.put(std::mem::take(&mut first).freeze());
                        upload = Some(writer);
                    }
                }
            }
        }
        if let Some(expected) = length
            && expected != written
        {
            abort(upload).await;
            return Err(BackendError::LengthMismatch {
                key: key.to_owned(),
                expected,
                actual: written,
            });
        }
        match upload {
            Some(writer) => writer
                .finish()
                .await
                .map(drop)
                .map_err(|e| store_error("complete multipart upload of", key, e)),
            None => self
                .store
                .put(&path, PutPayload::from(Bytes::from(first)))
                .await
                .map(drop)
                .map_err(|e| store_error("put", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        // S3's DELETE answers 204 whether or not the object existed, so ask first.
        let existed = self.stat(key).await?.is_some();
        self.store
            .delete(&self.path(key)?)
            .await
            .map_err(|e| store_error("delete", key, e))?;
        Ok(existed)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        // object_store lists whole path segments: list the deepest directory the prefix names,
        // then filter by the full prefix.
        let full = format!("{}{prefix}", self.prefix);
        let dir = full.rfind('/').map_or("", |i| &full[..i]);
        let dir_path = if dir.is_empty() {
            None
        } else {
            Some(Path::parse(dir).map_err(|_| BackendError::InvalidKey {
                key: prefix.chars().take(200).collect(),
                reason: "not a valid object name prefix",
            })?)
        };
        let objects: Vec<_> = self
            .store
            .list(dir_path.as_ref())
            .try_collect()
            .await
            .map_err(|e| store_error("list", prefix, e))?;
        let mut keys: Vec<String> = objects
            .into_iter()
            .filter_map(|meta| {
                let location = meta.location.as_ref();
                location
                    .strip_prefix(self.prefix.as_str())
                    .filter(|key| key.starts_with(prefix))
                    .map(str::to_owned)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// Abandons a multipart upload so no parts linger; a failed abort only leaves parts that a
/// bucket lifecycle rule cleans up, never a visible object.
async fn abort(upload: Option<WriteMultipart>) {
    if let Some(writer) = upload
        && let Err(e) = writer.abort().await
    {
        tracing::warn!(error = %shoal_core::chain(&e), "aborting a multipart upload failed");
    }
}

#[cfg(test)]
mod tests;
