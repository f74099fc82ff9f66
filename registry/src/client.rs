use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, LayerDescriptor, SizedStream};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::secrets::RegistryAuth;
use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use crate::docker_config::{self, Credentials, DockerConfig, canonical_registry};
use crate::error::{Error, Result, Target, error_chain, from_oci, transport};
use crate::platform::{Platform, PlatformMatch};
use crate::reference::Reference;

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

const ACCEPTED_MANIFESTS: &[&str] = &[
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST,
];

/// Manifests are small JSON documents; a larger one is refused as malformed.
const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// oci-client cuts chunked uploads into pieces of this size; reading the source in the same size keeps
/// one chunk per PATCH.
const UPLOAD_CHUNK: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries reached over plain http, besides localhost, 127.0.0.0/8 and [::1], which always are.
    /// Names as in references: `host`, `host:port`.
    pub insecure_registries: Vec<String>,
    /// The directory holding docker's `config.json`. `None` means `$DOCKER_CONFIG`, else `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Blobs up to this size are pushed in one request; larger ones in chunks.
    pub chunked_upload_threshold: u64,
    /// Connection establishment limit.
    pub connect_timeout: Duration,
    /// Longest silence tolerated in the middle of a response before the transfer counts as broken.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            docker_config_dir: None,
            chunked_upload_threshold: 32 << 20,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// A manifest or index as the registry served it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// An image manifest chosen for a platform, with what is needed to fetch the image.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The reference as given to [`RegistryClient::resolve`].
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The platform of the index entry that was chosen, when the reference named an index.
    pub platform: Option<Platform>,
    /// The index (or docker manifest list) the manifest was chosen from, if any.
    pub index: Option<Manifest>,
}

/// A registry client: cheap to clone, and safe to share between tasks that pull or push concurrently.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    docker_config_dir: Option<PathBuf>,
    credentials: RwLock<DockerConfig>,
    /// One oci-client per registry host: oci-client picks http or https per client, and its token cache
    /// then lives as long as this client.
    clients: Mutex<HashMap<String, oci_client::Client>>,
    /// For the login check, which oci-client cannot do (see [`RegistryClient::login`]); made on first use,
    /// since loading the system's CA certificates costs every other command time for nothing.
    http: std::sync::OnceLock<reqwest::Client>,
    /// Registries whose token realm was found fit for their credentials.
    realms_checked: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Done,
    /// The connection broke or the body ended early: worth one more try.
    Retry(Error),
}

impl RegistryClient {
    /// Reads credentials from the docker config; fails only if that file exists and cannot be read.
    pub fn new(config: RegistryConfig) -> Result<RegistryClient> {
        let docker_config_dir = config
            .docker_config_dir
            .clone()
            .or_else(docker_config::default_docker_config_dir);
        let credentials = match &docker_config_dir {
            Some(dir) => DockerConfig::load(dir)?,
            None => DockerConfig::default(),
        };
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                config,
                docker_config_dir,
                credentials: RwLock::new(credentials),
                clients: Mutex::new(HashMap::new()),
                http: std::sync::OnceLock::new(),
                realms_checked: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    /// Whether `registry` is spoken to over plain http.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let canon = canonical_registry(registry);
        if self
            .inner
            .config
            .insecure_registries
            .iter()
            .any(|r| canonical_registry(r) == canon)
        {
            return true;
        }
        let host = host_of(&canon);
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn auth_for(&self, registry: &str) -> RegistryAuth {
        let creds = self
            .inner
            .credentials
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match creds.credentials(registry) {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// The oci-client for the reference's registry, with that registry's credentials registered (oci-client
    /// only authenticates requests for registries it has credentials, even anonymous ones, for).
    async fn oci(&self, reference: &Reference) -> Result<oci_client::Client> {
        let registry = reference.registry();
        let has_credentials = matches!(self.auth_for(registry), RegistryAuth::Basic(..));
        let checked = || {
            self.inner
                .realms_checked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .contains(registry)
        };
        // oci-client sends Basic credentials to whatever token realm the registry names: the realm is
        // checked first, once per registry.
        if has_credentials && !checked() {
            self.check_token_realm(reference).await?;
            self.inner
                .realms_checked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(registry.to_owned());
        }
        let client = {
            let mut clients = self
                .inner
                .clients
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            clients
                .entry(registry.to_owned())
                .or_insert_with(|| {
                    let protocol = if self.is_insecure(registry) {
                        ClientProtocol::Http
                    } else {
                        ClientProtocol::Https
                    };
                    oci_client::Client::new(ClientConfig {
                        protocol,
                        use_monolithic_push: true,
                        connect_timeout: Some(self.inner.config.connect_timeout),
                        read_timeout: Some(self.inner.config.read_timeout),
                        user_agent: USER_AGENT,
                        ..ClientConfig::default()
                    })
                })
                .clone()
        };
        client
            .store_auth_if_needed(reference.api_host(), &self.auth_for(registry))
            .await;
        Ok(client)
    }

    /// The registry's API root, `scheme://host/`.
    fn api_base(&self, registry: &str, api_host: &str) -> Result<reqwest::Url> {
        let scheme = if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        reqwest::Url::parse(&format!("{scheme}://{api_host}/"))
            .map_err(|e| transport("parse the address of", registry, e))
    }

    /// Asks the registry, anonymously, where it would send credentials, and refuses a realm they must not
    /// go to (see [`realm_may_have_credentials`]).
    async fn check_token_realm(&self, reference: &Reference) -> Result<()> {
        let registry = reference.registry();
        let base = self.api_base(registry, reference.api_host())?;
        let url = base
            .join("v2/")
            .map_err(|e| transport("parse the address of", registry, e))?;
        let res = self
            .http()?
            .get(url)
            .send()
            .await
            .map_err(|e| transport("ask", registry, e))?;
        if res.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(());
        }
        // Fail closed: a challenge kiln cannot read is one oci-client might still follow somewhere.
        let realm = match bearer_challenge(res.headers()) {
            Ok(Some((realm, _))) => realm,
            Ok(None) => return Ok(()),
            Err(why) => {
                return Err(Error::UntrustedRealm {
                    registry: registry.to_owned(),
                    realm: "an unreadable challenge".to_owned(),
                    why,
                });
            }
        };
        realm_may_have_credentials(&base, &realm).map_err(|why| Error::UntrustedRealm {
            registry: registry.to_owned(),
            realm,
            why,
        })
    }

    fn http(&self) -> Result<&reqwest::Client> {
        if let Some(http) = self.inner.http.get() {
            return Ok(http);
        }
        let made = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(self.inner.config.connect_timeout)
            .read_timeout(self.inner.config.read_timeout)
            .build()
            .map_err(|e| transport("create HTTP client for", "registries", e))?;
        Ok(self.inner.http.get_or_init(|| made))
    }

    fn err(
        &self,
        op: &'static str,
        reference: &Reference,
        target: Target<'_>,
        e: OciDistributionError,
    ) -> Error {
        from_oci(op, &reference.to_string(), reference.registry(), target, e)
    }

    /// Fetches the manifest or index `reference` names, verified against the digest the reference pins
    /// (or the one the registry announces).
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<Manifest> {
        let oci = self.oci(reference).await?;
        let auth = self.auth_for(reference.registry());
        let (bytes, digest) = oci
            .pull_manifest_raw(reference.oci(), &auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.err("pull", reference, Target::Manifest, e))?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::MalformedManifest {
                reference: reference.to_string(),
                reason: format!("{} bytes is more than a manifest may have", bytes.len()),
            });
        }
        let digest = parse_digest(reference, &digest)?;
        let media_type = media_type_of(reference, &bytes)?;
        Ok(Manifest {
            digest,
            media_type,
            bytes: bytes.to_vec(),
        })
    }

    /// Resolves `reference` to the image manifest for `platform`, going through an OCI index or docker
    /// manifest list when the reference names one. Docker v2 schema 2 and OCI media types are accepted.
    ///
    /// A reference that names a single image manifest is returned whatever its platform, as containerd
    /// does; the caller can compare the config's `architecture` if it wants to warn.
    pub async fn resolve(&self, reference: &Reference, platform: &Platform) -> Result<Resolved> {
        let top = self.fetch_manifest(reference).await?;
        let (manifest, index, chosen) = if is_index(&top.media_type) {
            let index: ImageIndex = parse_json(reference, &top.bytes)?;
            let entry = select_platform(reference, &index, platform)?;
            let child_ref = reference.with_digest(entry.digest().as_ref());
            if !is_image_manifest(entry.media_type().as_ref()) {
                return Err(Error::UnsupportedMediaType {
                    reference: child_ref.to_string(),
                    media_type: entry.media_type().to_string(),
                });
            }
            let child = self.fetch_manifest(&child_ref).await?;
            if child.bytes.len() as u64 != entry.size() {
                return Err(Error::SizeMismatch {
                    reference: child_ref.to_string(),
                    digest: entry.digest().to_string(),
                    expected: entry.size(),
                    actual: child.bytes.len() as u64,
                });
            }
            let chosen = entry.platform().as_ref().map(|p| {
                Platform::new(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                )
            });
            (child, Some(top), chosen)
        } else {
            (top, None, None)
        };
        let manifest_ref = reference.with_digest(manifest.digest.as_ref());
        if !is_image_manifest(&manifest.media_type) {
            return Err(Error::UnsupportedMediaType {
                reference: manifest_ref.to_string(),
                media_type: manifest.media_type,
            });
        }
        let parsed: ImageManifest = parse_json(reference, &manifest.bytes)?;
        Ok(Resolved {
            reference: reference.clone(),
            manifest_digest: manifest.digest,
            media_type: manifest.media_type,
            config: parsed.config().clone(),
            layers: parsed.layers().clone(),
            manifest: manifest.bytes,
            platform: chosen,
            index,
        })
    }

    /// Streams the blob `descriptor` names into `writer`, checking its sha256 digest and size.
    ///
    /// A transfer that breaks midway is resumed once with an HTTP range request (or restarted, if the
    /// registry ignores ranges; the bytes already written are then skipped). On error the writer holds
    /// unverified bytes: write to a temporary file and keep it only on `Ok`. The writer is called from the
    /// async task, so it should be something quick like a file.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        writer: &mut (dyn Write + Send),
    ) -> Result<()> {
        let expected = descriptor.digest().to_string();
        if descriptor.digest().algorithm().as_ref() != "sha256" {
            return Err(Error::InvalidDigest {
                reference: reference.to_string(),
                input: expected,
                reason: "only sha256 digests are supported".to_owned(),
            });
        }
        let oci = self.oci(reference).await?;
        let mut state = FetchState {
            hasher: Sha256::new(),
            written: 0,
        };
        let mut retried = false;
        loop {
            match self
                .fetch_attempt(&oci, reference, descriptor, &mut state, writer)
                .await?
            {
                Attempt::Done => return Ok(()),
                Attempt::Retry(e) if !retried => {
                    tracing::warn!(
                        reference = %reference,
                        digest = %expected,
                        received = state.written,
                        "blob download broke off ({e}); resuming"
                    );
                    retried = true;
                }
                Attempt::Retry(e) => return Err(e),
            }
        }
    }

    async fn fetch_attempt(
        &self,
        oci: &oci_client::Client,
        reference: &Reference,
        descriptor: &Descriptor,
        state: &mut FetchState,
        writer: &mut (dyn Write + Send),
    ) -> Result<Attempt> {
        let digest = descriptor.digest().to_string();
        let size = descriptor.size();
        let layer = LayerDescriptor {
            digest: &digest,
            urls: descriptor.urls(),
        };
        let target = Target::Blob(&digest);
        let retryable = |e: &OciDistributionError| matches!(e, OciDistributionError::RequestError(r) if r.status().is_none());
        // How many leading bytes of this response were already written by an earlier attempt.
        let (stream, mut skip): (SizedStream, u64) = if state.written == 0 {
            match oci.pull_blob_stream(reference.oci(), &layer).await {
                Ok(s) => (s, 0),
                Err(e) if retryable(&e) => {
                    return Ok(Attempt::Retry(self.err("pull", reference, target, e)));
                }
                Err(e) => return Err(self.err("pull", reference, target, e)),
            }
        } else {
            match oci
                .pull_blob_stream_partial(reference.oci(), &layer, state.written, None)
                .await
            {
                Ok(BlobResponse::Partial(s)) => (s, 0),
                Ok(BlobResponse::Full(s)) => (s, state.written),
                Err(e) if retryable(&e) => {
                    return Ok(Attempt::Retry(self.err("pull", reference, target, e)));
                }
                Err(e) => return Err(self.err("pull", reference, target, e)),
            }
        };
        let mut stream = stream.stream;
        while let Some(chunk) = stream.next().await {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // oci-client's own digest check fires at the end of a full response; ours below reports
                    // the same mismatch with the digest we computed.
                    let is_digest_error = e
                        .get_ref()
                        .is_some_and(|inner| inner.downcast_ref::<DigestError>().is_some());
                    if is_digest_error && state.written == size {
                        break;
                    }
                    return Ok(Attempt::Retry(Error::Truncated {
                        reference: reference.to_string(),
                        digest,
                        expected: size,
                        received: state.written,
                        detail: error_chain(&e),
                    }));
                }
            };
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(n as usize);
                skip -= n;
            }
            if chunk.is_empty() {
                continue;
            }
            let total = state.written + chunk.len() as u64;
            if total > size {
                return Err(Error::SizeMismatch {
                    reference: reference.to_string(),
                    digest,
                    expected: size,
                    actual: total,
                });
            }
            writer.write_all(&chunk).map_err(|e| Error::Io {
                context: format!("write blob {digest} of {reference}"),
                source: e,
            })?;
            state.hasher.update(&chunk);
            state.written = total;
        }
        if state.written < size {
            return Ok(Attempt::Retry(Error::Truncated {
                reference: reference.to_string(),
                digest,
                expected: size,
                received: state.written,
                detail: "the registry ended the response early".to_owned(),
            }));
        }
        writer.flush().map_err(|e| Error::Io {
            context: format!("write blob {digest} of {reference}"),
            source: e,
        })?;
        let actual = format!("sha256:{}", hex::encode(state.hasher.clone().finalize()));
        if actual != digest {
            return Err(Error::DigestMismatch {
                reference: reference.to_string(),
                expected: digest,
                actual,
            });
        }
        Ok(Attempt::Done)
    }

    /// Whether the repository of `reference` already has the blob (HEAD request).
    pub async fn blob_exists(&self, reference: &Reference, digest: &Digest) -> Result<bool> {
        let oci = self.oci(reference).await?;
        let d = digest.to_string();
        oci.blob_exists(reference.oci(), &d)
            .await
            .map_err(|e| self.err("check blob in", reference, Target::Blob(&d), e))
    }

    /// Asks the registry to link a blob from `from_repo` (a repository on the same registry) into the
    /// repository of `target`, saving the upload. `Ok(false)` means the registry declined (it does not
    /// have the blob there, or does not allow mounts) and the blob must be pushed.
    pub async fn mount_blob(&self, target: &Reference, from_repo: &str, digest: &Digest) -> Result<bool> {
        let source = target.with_repository(from_repo)?;
        let oci = self.oci(target).await?;
        let d = digest.to_string();
        match oci.mount_blob(target.oci(), source.oci(), &d).await {
            Ok(()) => Ok(true),
            // oci-client expects 201 Created; a 202 Accepted is the registry opening a regular upload instead.
            Err(OciDistributionError::SpecViolationError(reason)) => {
                tracing::debug!(%target, from_repo, digest = %d, "mount declined: {reason}");
                Ok(false)
            }
            Err(e) => Err(self.err("mount blob into", target, Target::Blob(&d), e)),
        }
    }

    /// Uploads `size` bytes from `reader` as the blob `digest` into the repository of `reference`: in one
    /// request up to [`RegistryConfig::chunked_upload_threshold`], in chunks above. The content is hashed
    /// on the way and the upload is abandoned, not committed, if it does not match `digest` and `size`.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn Read + Send),
    ) -> Result<()> {
        let d = digest.to_string();
        if digest.algorithm().as_ref() != "sha256" {
            return Err(Error::InvalidDigest {
                reference: reference.to_string(),
                input: d,
                reason: "only sha256 digests are supported".to_owned(),
            });
        }
        let oci = self.oci(reference).await?;
        let target = Target::Blob(&d);
        if size <= self.inner.config.chunked_upload_threshold {
            let data = read_verified(reference, &d, size, reader)?;
            let stream = futures_util::stream::iter([Ok::<_, OciDistributionError>(data)]);
            oci.push_blob_stream(reference.oci(), stream, &d, Some(size))
                .await
                .map_err(|e| self.err("push blob to", reference, target, e))?;
            return Ok(());
        }

        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, OciDistributionError>>(2);
        let stream =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let reference_s = reference.to_string();
        let producer = async {
            let mut hasher = Sha256::new();
            let mut sent = 0u64;
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            let failure = loop {
                let want = (size - sent).min(UPLOAD_CHUNK as u64) as usize;
                if want == 0 {
                    match check_eof(reader) {
                        Ok(true) => {}
                        Ok(false) => break Some(size_error(&reference_s, &d, size, size + 1)),
                        Err(e) => break Some(read_error(&reference_s, &d, e)),
                    }
                    let actual = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
                    if actual != d {
                        break Some(Error::DigestMismatch {
                            reference: reference_s.clone(),
                            expected: d.clone(),
                            actual,
                        });
                    }
                    break None;
                }
                match read_full(reader, &mut buf[..want]) {
                    Ok(n) if n < want => break Some(size_error(&reference_s, &d, size, sent + n as u64)),
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        sent += n as u64;
                        if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            // The upload side stopped; its error is the one to report.
                            return None;
                        }
                    }
                    Err(e) => break Some(read_error(&reference_s, &d, e)),
                }
            };
            if failure.is_some() {
                // Failing the stream makes oci-client abandon the session before its committing PUT.
                let _ = tx
                    .send(Err(OciDistributionError::GenericError(Some(
                        "upload source failed".to_owned(),
                    ))))
                    .await;
            }
            drop(tx);
            failure
        };
        let upload = oci.push_blob_stream_chunked(reference.oci(), stream);
        let (failure, pushed) = tokio::join!(producer, upload);
        if let Some(e) = failure {
            return Err(e);
        }
        let pushed = pushed.map_err(|e| self.err("push blob to", reference, target, e))?;
        if pushed.blob_digest != d {
            return Err(Error::DigestMismatch {
                reference: reference.to_string(),
                expected: d,
                actual: pushed.blob_digest,
            });
        }
        Ok(())
    }

    /// Uploads a manifest or index under the tag (or digest) of `reference` and returns its digest.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let computed = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if let Some(pinned) = reference.digest()
            && pinned != computed
        {
            return Err(Error::DigestMismatch {
                reference: reference.to_string(),
                expected: pinned.to_owned(),
                actual: computed,
            });
        }
        let content_type =
            reqwest::header::HeaderValue::from_str(media_type).map_err(|_| Error::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: media_type.to_owned(),
            })?;
        let oci = self.oci(reference).await?;
        oci.push_manifest_raw(reference.oci(), bytes.to_vec(), content_type)
            .await
            .map_err(|e| self.err("push manifest", reference, Target::Manifest, e))?;
        parse_digest(reference, &computed)
    }

    /// Checks `username`/`password` against `registry` and, if accepted, stores them in the docker config
    /// (`auths`, written atomically with mode 0600), where this client and `docker` find them.
    ///
    /// The check is done here rather than by oci-client: its `auth` never sends Basic credentials to the
    /// registry before they are used (so it cannot tell wrong ones), and its token request always asks for
    /// a repository scope, which a login has none of.
    pub async fn login(&self, registry: &str, username: &str, password: &str) -> Result<()> {
        let registry = canonical_registry(registry);
        let dir = self.config_dir(&registry)?;
        self.verify_credentials(&registry, username, password).await?;
        let creds = Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        docker_config::update_auth(&dir, &registry, Some(&creds))?;
        self.set_credentials(&registry, Some(creds));
        Ok(())
    }

    /// Removes the stored credentials for `registry`; `Ok(false)` if there were none.
    pub fn logout(&self, registry: &str) -> Result<bool> {
        let registry = canonical_registry(registry);
        let dir = self.config_dir(&registry)?;
        let existed = docker_config::update_auth(&dir, &registry, None)?;
        self.set_credentials(&registry, None);
        Ok(existed)
    }

    /// The docker config file in use, if a location is known.
    pub fn docker_config_path(&self) -> Option<PathBuf> {
        self.inner
            .docker_config_dir
            .as_ref()
            .map(|d| d.join("config.json"))
    }

    fn config_dir(&self, registry: &str) -> Result<PathBuf> {
        self.inner
            .docker_config_dir
            .clone()
            .ok_or_else(|| Error::LoginFailed {
                registry: registry.to_owned(),
                reason: "no place for the docker config: set DOCKER_CONFIG or HOME".to_owned(),
            })
    }

    fn set_credentials(&self, registry: &str, creds: Option<Credentials>) {
        self.inner
            .credentials
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set(registry, creds);
        // oci-client keeps the first credentials it was given for a registry; a fresh client takes the new.
        self.inner
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|r, _| canonical_registry(r) != registry);
    }

    async fn verify_credentials(&self, registry: &str, username: &str, password: &str) -> Result<()> {
        let failed = |reason: String| Error::LoginFailed {
            registry: registry.to_owned(),
            reason,
        };
        let host = if registry == "docker.io" {
            "index.docker.io"
        } else {
            registry
        };
        let base = self.api_base(registry, host)?;
        let url = format!("{base}v2/");
        let http = self.http()?;
        let send = |req: reqwest::RequestBuilder| async move {
            req.send().await.map_err(|e| failed(error_chain(&e)))
        };

        let res = send(http.get(&url)).await?;
        if res.status().is_success() {
            tracing::info!(
                registry,
                "registry does not require authentication; storing credentials anyway"
            );
            return Ok(());
        }
        if res.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Err(failed(format!("{url} answered {}", res.status())));
        }
        if let Some((realm, service)) = bearer_challenge(res.headers()).map_err(failed)? {
            realm_may_have_credentials(&base, &realm).map_err(|why| Error::UntrustedRealm {
                registry: registry.to_owned(),
                realm: realm.clone(),
                why,
            })?;
            let mut query = vec![("account", username.to_owned())];
            if let Some(service) = service {
                query.push(("service", service));
            }
            let mut token_url =
                reqwest::Url::parse(&realm).map_err(|e| failed(format!("bad token realm {realm:?}: {e}")))?;
            token_url
                .query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
            let res = send(http.get(token_url).basic_auth(username, Some(password))).await?;
            return match res.status() {
                s if s.is_success() => Ok(()),
                reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
                    Err(failed("invalid username or password".to_owned()))
                }
                s => Err(failed(format!("token service {realm} answered {s}"))),
            };
        }
        if www_authenticate(res.headers())
            .to_ascii_lowercase()
            .contains("basic")
        {
            let res = send(http.get(&url).basic_auth(username, Some(password))).await?;
            return match res.status() {
                s if s.is_success() => Ok(()),
                reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
                    Err(failed("invalid username or password".to_owned()))
                }
                s => Err(failed(format!("{url} answered {s}"))),
            };
        }
        let challenge = www_authenticate(res.headers());
        Err(failed(format!("unsupported authentication scheme {challenge:?}")))
    }
}

fn www_authenticate(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `realm` and `service` of a Bearer challenge, if the registry sent one.
fn bearer_challenge(
    headers: &reqwest::header::HeaderMap,
) -> Result<Option<(String, Option<String>)>, String> {
    let challenge = www_authenticate(headers);
    let challenges = http_auth::parse_challenges(&challenge)
        .map_err(|e| format!("unreadable WWW-Authenticate {challenge:?}: {e}"))?;
    let Some(bearer) = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
    else {
        return Ok(None);
    };
    let param = |name: &str| {
        bearer
            .params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    let realm = param("realm").ok_or("Bearer challenge without realm")?;
    Ok(Some((realm, param("service"))))
}

/// Where a registry may have its credentials sent for a token: to itself, or over https to a host of its
/// own domain (Docker Hub's registry-1.docker.io sends them to auth.docker.io, GitLab's registry.gitlab.com
/// to gitlab.com). Never over plain http to anyone else: whoever can change a challenge on the way could
/// name their own host.
fn realm_may_have_credentials(registry: &reqwest::Url, realm: &str) -> Result<(), String> {
    let realm = reqwest::Url::parse(realm).map_err(|e| format!("which is not a URL ({e})"))?;
    let origin = |u: &reqwest::Url| {
        (
            u.scheme().to_owned(),
            u.host_str().map(str::to_owned),
            u.port_or_known_default(),
        )
    };
    if origin(&realm) == origin(registry) {
        return Ok(());
    }
    if realm.scheme() != "https" {
        return Err("another address, over plain http".to_owned());
    }
    let (Some(theirs), Some(ours)) = (realm.host_str(), registry.host_str()) else {
        return Err("which has no host".to_owned());
    };
    // A domain of at least two labels, not a bare TLD, and never for IP addresses.
    let domain = |host: &str| -> Option<String> {
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return None;
        }
        let (_, parent) = host.split_once('.')?;
        let labels: Vec<&str> = parent.split('.').collect();
        // Without a public-suffix list: `co.uk`, `com.au` and the like are nobody's domain.
        let public_suffix = labels.len() == 2 && labels[1].len() == 2 && labels[0].len() <= 3;
        (labels.len() >= 2 && !public_suffix).then(|| parent.to_ascii_lowercase())
    };
    let ours_lower = ours.to_ascii_lowercase();
    let theirs_lower = theirs.to_ascii_lowercase();
    let same_domain = theirs_lower == ours_lower
        || domain(ours).is_some_and(|d| d == theirs_lower || domain(theirs).is_some_and(|t| t == d));
    if same_domain {
        Ok(())
    } else {
        Err(format!("a host outside {ours}'s domain"))
    }
}

const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

struct FetchState {
    hasher: Sha256,
    written: u64,
}

/// `host` of `host:port`, `[v6]:port` or `host`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    }
}

fn parse_digest(reference: &Reference, digest: &str) -> Result<Digest> {
    digest.parse::<Digest>().map_err(|e| Error::InvalidDigest {
        reference: reference.to_string(),
        input: digest.to_owned(),
        reason: e.to_string(),
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(reference: &Reference, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::MalformedManifest {
        reference: reference.to_string(),
        reason: e.to_string(),
    })
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

fn is_image_manifest(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// The media type of a manifest from its `mediaType` field, or from its shape when the field is absent
/// (allowed for OCI documents). oci-client does not hand out the Content-Type header.
fn media_type_of(reference: &Reference, bytes: &[u8]) -> Result<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = parse_json(reference, bytes)?;
    if probe.schema_version != Some(2) {
        return Err(Error::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: match probe.schema_version {
                Some(1) => "docker image manifest schema 1 (deprecated; re-push the image)".to_owned(),
                Some(v) => format!("schemaVersion {v}"),
                None => "document without schemaVersion".to_owned(),
            },
        });
    }
    match (
        probe.media_type,
        probe.manifests.is_some(),
        probe.config.is_some(),
    ) {
        (Some(mt), _, _) => Ok(mt),
        (None, true, false) => Ok(MEDIA_TYPE_OCI_INDEX.to_owned()),
        (None, false, true) => Ok(MEDIA_TYPE_OCI_MANIFEST.to_owned()),
        (None, _, _) => Err(Error::MalformedManifest {
            reference: reference.to_string(),
            reason: "neither an image manifest nor an index (no mediaType, and not exactly one of \
                     `config` or `manifests`)"
                .to_owned(),
        }),
    }
}

/// The index entry that best runs on `platform`; among equals, the first, as containerd does.
fn select_platform<'a>(
    reference: &Reference,
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor> {
    let mut best: Option<((u32, u32), &Descriptor)> = None;
    for entry in index.manifests() {
        let Some(p) = entry.platform() else { continue };
        let candidate = Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        );
        if let Some(rank) = platform.compatibility(&candidate)
            && best.is_none_or(|(r, _)| rank > r)
        {
            best = Some((rank, entry));
        }
    }
    best.map(|(_, e)| e).ok_or_else(|| {
        let available: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|e| e.platform().as_ref())
            .map(|p| {
                Platform::new(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                )
                .to_string()
            })
            .collect();
        Error::NoMatchingPlatform {
            reference: reference.to_string(),
            platform: platform.to_string(),
            available: if available.is_empty() {
                "no platforms".to_owned()
            } else {
                available.join(", ")
            },
        }
    })
}

fn read_error(reference: &str, digest: &str, e: std::io::Error) -> Error {
    Error::Io {
        context: format!("read blob {digest} to push to {reference}"),
        source: e,
    }
}

fn size_error(reference: &str, digest: &str, expected: u64, actual: u64) -> Error {
    Error::SizeMismatch {
        reference: reference.to_owned(),
        digest: digest.to_owned(),
        expected,
        actual,
    }
}

/// Reads until `buf` is full or EOF; returns how much was read.
fn read_full(reader: &mut (dyn Read + Send), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn check_eof(reader: &mut (dyn Read + Send)) -> std::io::Result<bool> {
    let mut probe = [0u8; 1];
    Ok(read_full(reader, &mut probe)? == 0)
}

/// Reads exactly `size` bytes and checks they hash to `digest`, so a bad source fails before any upload.
fn read_verified(
    reference: &Reference,
    digest: &str,
    size: u64,
    reader: &mut (dyn Read + Send),
) -> Result<Bytes> {
    let r = reference.to_string();
    let len = usize::try_from(size).map_err(|_| size_error(&r, digest, size, 0))?;
    let mut data = vec![0u8; len];
    let n = read_full(reader, &mut data).map_err(|e| read_error(&r, digest, e))?;
    if n < len {
        return Err(size_error(&r, digest, size, n as u64));
    }
    if !check_eof(reader).map_err(|e| read_error(&r, digest, e))? {
        return Err(size_error(&r, digest, size, size + 1));
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if actual != digest {
        return Err(Error::DigestMismatch {
            reference: r,
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {

    #[test]
    fn credentials_go_to_the_registry_or_its_own_domain_over_https() {
        let base = |u: &str| reqwest::Url::parse(u).unwrap();
        let hub = base("https://index.docker.io/");
        for realm in [
            "https://auth.docker.io/token",
            "https://index.docker.io/token",
            "https://docker.io/token",
        ] {
            assert_eq!(realm_may_have_credentials(&hub, realm), Ok(()), "{realm}");
        }
        let shop = base("https://registry.shop.co.uk/");
        assert_eq!(
            realm_may_have_credentials(&shop, "https://auth.shop.co.uk/token"),
            Ok(())
        );
        let gitlab = base("https://registry.gitlab.com/");
        assert_eq!(
            realm_may_have_credentials(&gitlab, "https://gitlab.com/jwt/auth"),
            Ok(())
        );
        let local = base("http://127.0.0.1:5000/");
        assert_eq!(
            realm_may_have_credentials(&local, "http://127.0.0.1:5000/token"),
            Ok(())
        );
        for (registry, realm) in [
            (&hub, "http://auth.docker.io/token"),
            (&hub, "https://evil.io/token"),
            (&hub, "https://docker.io.evil.com/token"),
            (&gitlab, "https://evil.com/jwt"),
            (&local, "http://127.0.0.1:5001/token"),
            (&local, "https://127.0.0.2/token"),
            (&base("https://a.com/"), "https://b.com/token"),
            (
                &base("https://registry.shop.co.uk/"),
                "https://auth.evil.co.uk/token",
            ),
        ] {
            assert!(
                realm_may_have_credentials(registry, realm).is_err(),
                "{registry} -> {realm}"
            );
        }
    }

    use super::*;

    #[test]
    fn client_can_be_shared_between_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<RegistryClient>();
    }

    #[test]
    fn loopback_and_configured_registries_are_insecure() {
        let client = RegistryClient::new(RegistryConfig {
            insecure_registries: vec!["http://myreg.local:5000/".into()],
            docker_config_dir: Some(PathBuf::from("/nonexistent-kiln-test")),
            ..RegistryConfig::default()
        })
        .unwrap();
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "myreg.local:5000",
        ] {
            assert!(client.is_insecure(r), "{r}");
        }
        for r in [
            "docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "myreg.local",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!client.is_insecure(r), "{r}");
        }
    }

    fn r() -> Reference {
        Reference::parse("localhost:5000/x:y").unwrap()
    }

    #[test]
    fn media_types_from_body() {
        let oci = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(media_type_of(&r(), oci).unwrap(), MEDIA_TYPE_OCI_MANIFEST);
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(media_type_of(&r(), idx).unwrap(), MEDIA_TYPE_OCI_INDEX);
        let docker = format!(r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}"}}"#);
        assert_eq!(
            media_type_of(&r(), docker.as_bytes()).unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        let e = media_type_of(&r(), br#"{"schemaVersion":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema 1") && e.contains("localhost:5000/x:y"), "{e}");
        let e = media_type_of(&r(), b"{not json").unwrap_err().to_string();
        assert!(e.starts_with("malformed manifest localhost:5000/x:y"), "{e}");
    }

    fn index(platforms: &[&str]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let parts: Vec<&str> = p.split('/').collect();
                let mut platform = serde_json::json!({"os": parts[0], "architecture": parts[1]});
                if let Some(v) = parts.get(2) {
                    platform["variant"] = (*v).into();
                }
                serde_json::json!({
                    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                    "digest": format!("sha256:{}", format!("{i}").repeat(64)),
                    "size": 1,
                    "platform": platform,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": manifests})).unwrap()
    }

    fn pick(platforms: &[&str], want: &str) -> Result<usize> {
        let idx = index(platforms);
        let chosen = select_platform(&r(), &idx, &want.parse().unwrap())?;
        Ok(idx.manifests().iter().position(|d| d == chosen).unwrap())
    }

    #[test]
    fn platform_selection() {
        let all = [
            "linux/amd64",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "windows/amd64",
        ];
        assert_eq!(pick(&all, "linux/amd64").unwrap(), 0);
        assert_eq!(pick(&all, "linux/arm64").unwrap(), 3);
        assert_eq!(pick(&all, "linux/aarch64").unwrap(), 3);
        assert_eq!(pick(&all, "linux/arm").unwrap(), 2);
        assert_eq!(pick(&all, "linux/arm/v6").unwrap(), 1);
        assert_eq!(pick(&all, "windows/amd64").unwrap(), 4);
        assert_eq!(
            pick(&["linux/arm/v5", "linux/arm/v6"], "linux/arm/v7").unwrap(),
            1
        );
        assert_eq!(pick(&["linux/arm64"], "linux/arm64/v8").unwrap(), 0);
        let e = pick(&all, "linux/s390x").unwrap_err().to_string();
        assert!(
            e.contains("linux/s390x") && e.contains("linux/arm/v7") && e.contains("localhost:5000/x:y"),
            "{e}"
        );
    }
}
