//! `kiln build --ssh`: the agents `RUN --mount=type=ssh` steps talk to. A step never gets a key, only a
//! socket of its own for the step's life: relayed to the user's agent (`--ssh default=$SSH_AUTH_SOCK`), or
//! answered by kiln itself from key files read into memory (`--ssh deploy=~/.ssh/id_ed25519`), as BuildKit's
//! ssh provider does. Either way a step can only list keys and sign with them (the two requests ssh and git
//! make); everything else an agent can be asked — add, remove, lock — is refused, the relay included.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use kiln_solver::executor::{SshAgent, SshSocket};
use ssh_key::private::KeypairData;
use ssh_key::{HashAlg, PrivateKey};

/// `--ssh ID[=PATH[,PATH...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    pub id: String,
    /// One agent socket, or key files; none means `$SSH_AUTH_SOCK`.
    pub paths: Vec<PathBuf>,
}

impl SshSpec {
    /// Parses a `--ssh` value the way buildx does.
    pub fn parse(text: &str) -> Result<SshSpec, String> {
        let (id, paths) = text.split_once('=').unwrap_or((text, ""));
        if id.is_empty() || id.contains(',') {
            return Err(format!(
                "invalid --ssh {text:?}: write ID, ID=SOCKET or ID=KEYFILE[,KEYFILE...] (e.g. default=$SSH_AUTH_SOCK)"
            ));
        }
        let paths = paths
            .split(',')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(SshSpec {
            id: id.to_string(),
            paths,
        })
    }
}

/// The agents of a build, by id. Key files are read (and checked) now, so a bad key fails the build before
/// any step runs.
pub fn agents(specs: &[SshSpec]) -> Result<HashMap<String, Arc<dyn SshAgent>>, String> {
    let mut agents = HashMap::new();
    for spec in specs {
        agents.insert(spec.id.clone(), agent(spec)?);
    }
    Ok(agents)
}

fn agent(spec: &SshSpec) -> Result<Arc<dyn SshAgent>, String> {
    let id = &spec.id;
    let paths = if spec.paths.is_empty() {
        let socket = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).ok_or_else(|| {
            format!("--ssh {id}: SSH_AUTH_SOCK is not set; start an agent (eval $(ssh-agent); ssh-add) or pass --ssh {id}=PATH")
        })?;
        vec![PathBuf::from(socket)]
    } else {
        spec.paths.clone()
    };
    let is_socket = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket());
    if let [only] = paths.as_slice()
        && is_socket(only)
    {
        return Ok(Arc::new(Relay {
            upstream: only.clone(),
        }));
    }
    let mut keys = Vec::new();
    for path in &paths {
        if is_socket(path) {
            return Err(format!(
                "--ssh {id}: {} is an agent socket, which must be the only path given for an id",
                path.display()
            ));
        }
        let text = std::fs::read(path).map_err(|e| format!("--ssh {id}: reading {}: {e}", path.display()))?;
        let key = PrivateKey::from_openssh(&text).map_err(|e| {
            format!(
                "--ssh {id}: {} is not an OpenSSH private key ({e}); `ssh-keygen -p -f KEY` rewrites a PEM key in that format",
                path.display()
            )
        })?;
        if key.is_encrypted() {
            return Err(format!(
                "--ssh {id}: {} is protected by a passphrase; add it to an agent (ssh-add) and pass --ssh {id}=$SSH_AUTH_SOCK",
                path.display()
            ));
        }
        keys.push(key);
    }
    Ok(Arc::new(Keys { keys: Arc::new(keys) }))
}

/// Relays every connection to the user's agent.
#[derive(Debug)]
struct Relay {
    upstream: PathBuf,
}

impl SshAgent for Relay {
    fn socket(&self, owner: (u32, u32, u32)) -> std::io::Result<SshSocket> {
        let upstream = self.upstream.clone();
        serve(owner, move |client| relay(&upstream, client))
    }
}

/// Passes a step's requests to the user's agent one message at a time, only the two kiln's own agent answers:
/// a step must not remove, add or lock the user's keys.
fn relay(upstream: &Path, mut client: UnixStream) {
    let Ok(mut agent) = UnixStream::connect(upstream) else {
        return;
    };
    while let Some(request) = read_message(&mut client) {
        let reply = match request.first() {
            Some(&(REQUEST_IDENTITIES | SIGN_REQUEST)) => {
                if write_message(&mut agent, &request).is_err() {
                    return;
                }
                match read_message(&mut agent) {
                    Some(reply) => reply,
                    None => return,
                }
            }
            _ => vec![FAILURE],
        };
        if write_message(&mut client, &reply).is_err() {
            return;
        }
    }
}

fn read_message(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_MESSAGE {
        return None;
    }
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).ok()?;
    Some(message)
}

fn write_message(stream: &mut UnixStream, message: &[u8]) -> std::io::Result<()> {
    let mut framed = (message.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}

/// Answers from keys held in memory.
struct Keys {
    keys: Arc<Vec<PrivateKey>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(<{} keys>)", self.keys.len())
    }
}

impl SshAgent for Keys {
    fn socket(&self, owner: (u32, u32, u32)) -> std::io::Result<SshSocket> {
        let keys = self.keys.clone();
        serve(owner, move |stream| answer(&keys, stream))
    }
}

// The agent protocol (draft-miller-ssh-agent): the messages kiln's agent knows.
const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
const RSA_SHA2_256: u32 = 2;
const RSA_SHA2_512: u32 = 4;
/// No request of the two kiln answers comes near this; a longer one is an attack on the agent.
const MAX_MESSAGE: usize = 256 << 10;
/// Connections one step's socket serves at once (ssh and git use one or two).
const MAX_CONNECTIONS: usize = 16;

fn answer(keys: &[PrivateKey], mut stream: UnixStream) {
    while let Some(message) = read_message(&mut stream) {
        let reply = match message[0] {
            REQUEST_IDENTITIES => identities(keys),
            SIGN_REQUEST => sign(keys, &message[1..]).unwrap_or_else(|| vec![FAILURE]),
            _ => vec![FAILURE],
        };
        if write_message(&mut stream, &reply).is_err() {
            return;
        }
    }
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_string(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(input.get(..4)?.try_into().ok()?) as usize;
    let rest = &input[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn identities(keys: &[PrivateKey]) -> Vec<u8> {
    let listed: Vec<(Vec<u8>, &str)> = keys
        .iter()
        .filter_map(|k| Some((k.public_key().to_bytes().ok()?, k.comment())))
        .collect();
    let mut out = vec![IDENTITIES_ANSWER];
    out.extend((listed.len() as u32).to_be_bytes());
    for (blob, comment) in listed {
        put_string(&mut out, &blob);
        put_string(&mut out, comment.as_bytes());
    }
    out
}

fn sign(keys: &[PrivateKey], request: &[u8]) -> Option<Vec<u8>> {
    use signature::{SignatureEncoding, Signer};
    let (blob, rest) = take_string(request)?;
    let (data, rest) = take_string(rest)?;
    let flags = rest
        .get(..4)
        .and_then(|f| f.try_into().ok())
        .map_or(0, u32::from_be_bytes);
    let key = keys
        .iter()
        .find(|k| k.public_key().to_bytes().ok().as_deref() == Some(blob))?;
    let (algorithm, signature) = match key.key_data() {
        // RSA signs with the hash the client asks for; plain `ssh-rsa` (SHA-1) is what old servers and
        // `ssh-add -T` ask for, and OpenSSH's agent still signs it.
        KeypairData::Rsa(rsa) => {
            use rsa::pkcs1v15::SigningKey;
            use ssh_key::sha2::{Sha256, Sha512};
            let private = rsa_private_key(rsa)?;
            let (hash, signature) = if flags & RSA_SHA2_512 != 0 {
                (
                    Some(HashAlg::Sha512),
                    SigningKey::<Sha512>::new(private).try_sign(data),
                )
            } else if flags & RSA_SHA2_256 != 0 {
                (
                    Some(HashAlg::Sha256),
                    SigningKey::<Sha256>::new(private).try_sign(data),
                )
            } else {
                (None, SigningKey::<sha1::Sha1>::new(private).try_sign(data))
            };
            let algorithm = ssh_key::Algorithm::Rsa { hash };
            (algorithm.as_str().to_string(), signature.ok()?.to_vec())
        }
        _ => {
            let signature: ssh_key::Signature = key.try_sign(data).ok()?;
            (
                signature.algorithm().as_str().to_string(),
                signature.as_bytes().to_vec(),
            )
        }
    };
    let mut encoded = Vec::new();
    put_string(&mut encoded, algorithm.as_bytes());
    put_string(&mut encoded, &signature);
    let mut out = vec![SIGN_RESPONSE];
    put_string(&mut out, &encoded);
    Some(out)
}

/// The `rsa` crate's key for an OpenSSH one, from its components (ssh-key 0.6's own conversion passes `p`
/// twice and fails).
fn rsa_private_key(keypair: &ssh_key::private::RsaKeypair) -> Option<rsa::RsaPrivateKey> {
    let uint = |m: &ssh_key::Mpint| m.as_positive_bytes().map(rsa::BigUint::from_bytes_be);
    let private = &keypair.private;
    rsa::RsaPrivateKey::from_components(
        uint(&keypair.public.n)?,
        uint(&keypair.public.e)?,
        uint(&private.d)?,
        vec![uint(&private.p)?, uint(&private.q)?],
    )
    .ok()
}

/// A listening socket in a private directory, owned and moded for the step, each connection handled on a
/// thread of its own; stopped and removed when the returned [`SshSocket`] drops.
fn serve(
    (uid, gid, mode): (u32, u32, u32),
    handle: impl Fn(UnixStream) + Send + Sync + 'static,
) -> std::io::Result<SshSocket> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kiln-ssh-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let serving = Serving {
        path: dir.join("agent.sock"),
        dir,
        stopped: Arc::new(AtomicBool::new(false)),
    };
    let listener = UnixListener::bind(&serving.path)?;
    std::os::unix::fs::chown(&serving.path, Some(uid), Some(gid))?;
    std::fs::set_permissions(&serving.path, std::fs::Permissions::from_mode(mode))?;
    let stopped = serving.stopped.clone();
    let handle = Arc::new(handle);
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            // A step that opens connections without end must not use up kiln's threads and descriptors.
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (handle, open) = (handle.clone(), open.clone());
            std::thread::spawn(move || {
                handle(conn);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(SshSocket {
        path: serving.path.clone(),
        guard: Box::new(serving),
    })
}

struct Serving {
    path: PathBuf,
    dir: PathBuf,
    stopped: Arc<AtomicBool>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees it is stopped.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_buildx() {
        assert_eq!(SshSpec::parse("default").unwrap().paths, Vec::<PathBuf>::new());
        assert_eq!(
            SshSpec::parse("deploy=/k/a,/k/b").unwrap(),
            SshSpec {
                id: "deploy".into(),
                paths: vec!["/k/a".into(), "/k/b".into()]
            }
        );
        assert!(SshSpec::parse("=x").is_err());
    }

    #[test]
    fn refuses_what_it_does_not_know_and_oversized_requests() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || answer(&[], theirs));
        ours.write_all(&[0, 0, 0, 1, 17]).unwrap(); // SSH_AGENTC_ADD_IDENTITY, say
        let mut reply = [0u8; 5];
        ours.read_exact(&mut reply).unwrap();
        assert_eq!(reply, [0, 0, 0, 1, FAILURE]);
        ours.write_all(&[0, 0, 0, 1, REQUEST_IDENTITIES]).unwrap();
        let mut reply = [0u8; 9];
        ours.read_exact(&mut reply).unwrap();
        assert_eq!(reply, [0, 0, 0, 5, IDENTITIES_ANSWER, 0, 0, 0, 0]);
        ours.write_all(&u32::MAX.to_be_bytes()).unwrap();
        server.join().unwrap();
        assert_eq!(ours.read(&mut [0u8; 1]).unwrap(), 0, "the agent hung up");
    }
}
